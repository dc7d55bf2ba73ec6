package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/redact"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
)

// runDeadLetters lists the batches the writers could not write.
func runDeadLetters(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dead-letters", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c commonFlags
	c.register(fs)
	source := fs.String("source", "", "only this source")
	limit := fs.Int("limit", natsbus.MaxDeadLetters, "the last this many")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	cfg, err := c.load()
	if err != nil {
		return err
	}
	js, closeBus, _, err := connect(ctx, cfg, c, stack.Options{Roles: []string{stack.RoleNone}, Logger: newLogger(stderr, slog.LevelWarn)}, false)
	if err != nil {
		return err
	}
	defer closeBus()
	list, err := natsbus.DeadLetters(ctx, js, *source, *limit)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-20s %-28s %-38s %5s %4s  %s\n", "TIME", "SOURCE.TABLE", "RUN", "SEQ", "TRY", "REASON")
	for _, d := range list {
		// Every header is untrusted text: shown, never sent to the terminal.
		safe := func(v string) string { return redact.Terminal(redact.String(v)) }
		fmt.Fprintf(stdout, "%-20s %-28s %-38s %5s %4s  %s\n", d.At.Format(time.DateTime), safe(d.Source)+"."+safe(d.Table),
			safe(d.Run), safe(d.Seq), safe(d.Deliveries), safe(d.Reason))
	}
	fmt.Fprintf(stdout, "%d dead letters\n", len(list))
	return nil
}

// runVerify checks a source's published extract against the on-disk
// contract. With --loop it keeps opening and checking it until interrupted,
// as a reader would, and reports every failure.
func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "./data", "data directory")
	loop := fs.Bool("loop", false, "check again and again until SIGINT/SIGTERM, then print the tally")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("usage: da verify <source> [--data-dir DIR] [--loop]")}
	}
	layout, err := schemas.NewLayout(*dataDir)
	if err != nil {
		return err
	}
	path, err := layout.Extract(pos[0])
	if err != nil {
		return err
	}
	if !*loop {
		x, err := extractcheck.Verify(ctx, path)
		if err != nil {
			return err
		}
		for _, m := range x.Meta {
			fmt.Fprintf(stdout, "%-28s %-7s %12s rows\n", m.Table, m.QueryMode, thousands(m.Rows))
		}
		fmt.Fprintf(stdout, "%s honours the extract contract\n", path)
		return nil
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	var reads, failures int
	for ctx.Err() == nil {
		if _, err := extractcheck.Verify(context.Background(), path, extractcheck.WhileWriting()); err != nil {
			failures++
			fmt.Fprintf(stdout, "FAIL %s\n", err)
		}
		reads++
	}
	fmt.Fprintf(stdout, "reads=%d failures=%d\n", reads, failures)
	if failures > 0 {
		return exitCode(1)
	}
	return nil
}
