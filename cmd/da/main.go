// Command da is the Agnes Connector Kit: connectors, writers and the
// finalizer around NATS JetStream. See "da help".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/agnes-ai/connector-kit/internal/cli"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal exits at once.
		<-ctx.Done()
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		os.Exit(130)
	}()
	stopProfile := cli.ProfileFromEnv(os.Stderr)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	stopProfile()
	os.Exit(code)
}
