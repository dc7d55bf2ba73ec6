package cli

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/connectors/connectortest"
	"github.com/agnes-ai/connector-kit/connectors/connectortest/extracttest"
	"github.com/agnes-ai/connector-kit/internal/config"
)

const connectorUsage = `usage:
  da connector list
  da connector discover <source> [--config FILE]
  da connector test <source> [--config FILE]
  da connector check <source> [--config FILE]
  da connector new <name> [--caps discover,read,...] [--dir connectors]`

func runConnector(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New(connectorUsage)}
	}
	switch args[0] {
	case "list":
		return connectorList(stdout)
	case "discover":
		return connectorDiscover(ctx, args[1:], stdout, stderr)
	case "test":
		return connectorTest(ctx, args[1:], stdout, stderr)
	case "check":
		return connectorCheck(ctx, args[1:], stdout, stderr)
	case "new":
		return connectorNew(args[1:], stdout, stderr)
	}
	return usageError{fmt.Errorf("unknown connector command %q\n%s", args[0], connectorUsage)}
}

func connectorList(stdout io.Writer) error {
	reg := builtin.Registry()
	fmt.Fprintf(stdout, "%-12s %-8s %-28s %s\n", "NAME", "VERSION", "CAPABILITIES", "DESCRIPTION")
	for _, n := range reg.Names() {
		r, _ := reg.Lookup(n)
		m := r.Manifest
		fmt.Fprintf(stdout, "%-12s %-8s %-28s %s\n", m.Name, m.Version, strings.Join(m.Capabilities.Strings(), ","), m.Description)
	}
	return nil
}

// sourceArg parses "<source> [--config FILE]" and returns the source's config.
func sourceArg(name string, args []string, stderr io.Writer) (config.Source, error) {
	fs := flag.NewFlagSet("connector "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "config file (default: the built-in demo source)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return config.Source{}, err
	}
	if len(pos) != 1 {
		return config.Source{}, usageError{fmt.Errorf("usage: da connector %s <source> [--config FILE]", name)}
	}
	cfg := config.Default()
	if *path != "" {
		if cfg, err = config.Load(*path); err != nil {
			return config.Source{}, err
		}
	}
	return cfg.Source(pos[0])
}

func connectorDiscover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	src, err := sourceArg("discover", args, stderr)
	if err != nil {
		return err
	}
	conn, m, err := builtin.Registry().Open(src.Connector, src.Config)
	if err != nil {
		return err
	}
	d, ok := conn.(connectors.Discoverer)
	if !ok || !conn.Capabilities().Has(connectors.Discover) {
		return fmt.Errorf("connector %s does not declare discover (capabilities: %s)", m.Name, conn.Capabilities())
	}
	tables, err := d.Discover(ctx)
	if err != nil {
		return fmt.Errorf("discover %s: %w", src.Name, err)
	}
	fmt.Fprintf(stdout, "source %s (connector %s %s): %d tables\n", src.Name, m.Name, m.Version, len(tables))
	for _, t := range tables {
		fmt.Fprintf(stdout, "\n%s  [%s]", t.Name, t.Capabilities)
		if len(t.PrimaryKey) > 0 {
			fmt.Fprintf(stdout, "  key: %s", strings.Join(t.PrimaryKey, ", "))
		}
		if t.Description != "" {
			fmt.Fprintf(stdout, "\n  %s", t.Description)
		}
		fmt.Fprintln(stdout)
		if t.Schema != nil {
			for _, f := range t.Schema.Fields() {
				null := "not null"
				if f.Nullable {
					null = "nullable"
				}
				fmt.Fprintf(stdout, "    %-24s %-32s %s\n", f.Name, f.Type, null)
			}
		}
	}
	return nil
}

// connectorCheck runs a source's health check: a cheap connection test
// that reads no data. Exit code 1 when it fails.
func connectorCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	src, err := sourceArg("check", args, stderr)
	if err != nil {
		return err
	}
	reg := builtin.Registry()
	conn, _, err := reg.Open(src.Connector, src.Config)
	if err != nil {
		return fmt.Errorf("source %s: %w", src.Name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	if err := reg.Health(ctx, src.Connector, src.Config, conn); err != nil {
		return fmt.Errorf("source %s: %w", src.Name, err)
	}
	fmt.Fprintf(stdout, "source %s (connector %s) is healthy (%s)\n", src.Name, src.Connector, time.Since(start).Round(time.Millisecond))
	return nil
}

func connectorTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	src, err := sourceArg("test", args, stderr)
	if err != nil {
		return err
	}
	reg, err := builtin.Registry().Lookup(src.Connector)
	if err != nil {
		return err
	}
	suite := connectortest.Suite{Registration: reg, Config: src.Config, Tables: src.Tables, Incremental: map[string]string{}}
	for t, o := range src.TableOptions {
		if o.IncrementalKey != "" {
			suite.Incremental[t] = o.IncrementalKey
		}
	}
	fmt.Fprintf(stdout, "contract checks for source %s (connector %s)\n", src.Name, reg.Manifest.Name)
	failed := 0
	for _, c := range extracttest.Checks(suite) {
		start := time.Now()
		err := c.Run(ctx)
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "FAIL  %-28s %v\n", c.Name, err)
			continue
		}
		fmt.Fprintf(stdout, "PASS  %-28s %s\n", c.Name, time.Since(start).Round(time.Millisecond))
	}
	if failed > 0 {
		fmt.Fprintf(stdout, "%d of %d checks failed\n", failed, len(extracttest.Checks(suite)))
		return exitCode(1)
	}
	fmt.Fprintln(stdout, "all checks passed")
	return nil
}

//go:embed scaffold/*.tmpl
var scaffold embed.FS

var packageNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

type scaffoldData struct {
	Name, Title, CapList, CapExpr, TableCaps, ImportPath, TokenEnv string
	Discover, Read, Stream, Remote, Write                          bool
}

func connectorNew(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connector new", flag.ContinueOnError)
	fs.SetOutput(stderr)
	caps := fs.String("caps", "discover,read", "capabilities: discover, read, stream, remote, write (comma-separated)")
	dir := fs.String("dir", "connectors", "folder that gets the new connector's folder")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("usage: da connector new <name> [--caps discover,read,...] [--dir connectors]")}
	}
	name := pos[0]
	if !packageNameRE.MatchString(name) {
		return usageError{fmt.Errorf("connector name %q must be a lowercase Go package name matching %s", name, packageNameRE)}
	}
	flags, err := connectors.ParseCapabilities(strings.Split(*caps, ","))
	if err != nil {
		return usageError{fmt.Errorf("--caps: %w", err)}
	}
	target, err := filepath.Abs(filepath.Join(*dir, name))
	if err != nil {
		return err
	}
	if _, err := os.Stat(target); err == nil {
		return fmt.Errorf("%s already exists; choose another name or remove it", target)
	}
	importPath, err := importPathOf(target)
	if err != nil {
		return err
	}
	if flags.Has(connectors.Stream) && !flags.Has(connectors.Discover) {
		return usageError{fmt.Errorf("--caps: stream needs discover: the runtime learns a connector's partitioned tables from Discover")}
	}
	d := scaffoldData{Name: name, Title: strings.ToUpper(name[:1]) + name[1:], ImportPath: importPath,
		TokenEnv: strings.ToUpper(name) + "_TOKEN",
		Discover: flags.Has(connectors.Discover), Read: flags.Has(connectors.Read), Stream: flags.Has(connectors.Stream),
		Remote: flags.Has(connectors.Remote), Write: flags.Has(connectors.Write)}
	d.CapList = strings.Join(flags.Strings(), ", ")
	var exprs []string
	for _, c := range flags.Strings() {
		exprs = append(exprs, "connectors."+strings.ToUpper(c[:1])+c[1:])
	}
	d.CapExpr = strings.Join(exprs, " | ")
	switch {
	case d.Read:
		d.TableCaps = "connectors.Read"
	case d.Remote:
		d.TableCaps = "connectors.Remote"
	case d.Stream:
		d.TableCaps = "connectors.Stream"
	default:
		d.TableCaps = "connectors.Write"
	}
	files := map[string]string{
		"connector.yaml.tmpl":    "connector.yaml",
		"connector.go.tmpl":      name + ".go",
		"connector_test.go.tmpl": name + "_test.go",
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	for tmpl, out := range files {
		t, err := template.ParseFS(scaffold, "scaffold/"+tmpl)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, d); err != nil {
			return fmt.Errorf("render %s: %w", out, err)
		}
		if err := os.WriteFile(filepath.Join(target, out), buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "created %s (%s)\n", target, d.CapList)
	fmt.Fprintf(stdout, "next:\n  go test %s/...\n  add %s.Register(r) to connectors/builtin/builtin.go to ship it in da\n",
		relOrAbs(target), name)
	return nil
}

// importPathOf derives the Go import path of dir from the nearest go.mod.
func importPathOf(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil {
			m := regexp.MustCompile(`(?m)^module\s+(\S+)`).FindSubmatch(b)
			if m == nil {
				return "", fmt.Errorf("%s has no module line", filepath.Join(d, "go.mod"))
			}
			rel, err := filepath.Rel(d, dir)
			if err != nil {
				return "", err
			}
			return string(m[1]) + "/" + filepath.ToSlash(rel), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s: run da connector new inside a Go module", dir)
		}
	}
}

func relOrAbs(p string) string {
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
			return "./" + r
		}
	}
	return p
}
