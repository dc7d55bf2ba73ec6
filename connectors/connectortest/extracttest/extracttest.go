// Package extracttest is the connector contract's check through the real
// pipeline: a full sync (embedded bus, producer, writers, finalizer) into a
// temporary folder, the extract checked point by point, no secret in any
// file, and an incremental sync of unchanged data adding nothing. It links
// the engine and DuckDB; the protocol checks it runs first are in
// connectortest, which links neither.
package extracttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/connectortest"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/google/uuid"
)

// Checks are the protocol checks of s, then the full-extract check.
func Checks(s connectortest.Suite) []connectortest.Check {
	return append(connectortest.Checks(s), connectortest.Check{Name: "FullExtractIsValid",
		Run: func(ctx context.Context) error { return fullExtract(ctx, s) }})
}

// Run runs every check as a subtest.
func Run(t *testing.T, s connectortest.Suite) {
	t.Helper()
	connectortest.RunChecks(t, Checks(s))
}

// fullExtract syncs the connector through the real pipeline (embedded bus,
// producer, writers, finalizer) into a temporary folder, checks the extract,
// then, for the Incremental tables, syncs again and checks nothing doubled.
func fullExtract(ctx context.Context, s connectortest.Suite) error {
	dir, err := os.MkdirTemp("", "connectortest-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if caps := s.Registration.Manifest.Capabilities; !caps.Has(connectors.Read) && !caps.Has(connectors.Remote) {
		return nil // nothing a batch sync publishes
	}
	reg := connectors.NewRegistry()
	if err := reg.Register(s.Registration); err != nil {
		return err
	}
	src, incremental := contractSource(s)
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{src}
	st, err := stack.Start(ctx, stack.Options{Config: cfg, Registry: reg, DataDir: dir, Writers: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer st.Stop()
	sync := func() (*stack.Report, error) {
		rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "contract", RequestedAt: time.Now().UTC()}, nil)
		if err != nil {
			return nil, err
		}
		for _, r := range rep.Results {
			if r.Status != schemas.StatusDone {
				return rep, fmt.Errorf("table %s failed: %s", r.Table, r.Error)
			}
		}
		return rep, nil
	}
	if _, err := sync(); err != nil {
		return err
	}
	layout := schemas.LayoutAt(dir)
	path, err := layout.Extract("contract")
	if err != nil {
		return err
	}
	x, err := extractcheck.Verify(ctx, path)
	if err != nil {
		return fmt.Errorf("extract breaks the contract: %w", err)
	}
	if len(x.Meta) == 0 {
		return errors.New("the extract has no table")
	}
	if err := noSecretInFiles(s, layout.Extracts()); err != nil {
		return err
	}
	if len(incremental) == 0 {
		return nil
	}
	before, err := distinctCounts(ctx, path, incremental)
	if err != nil {
		return err
	}
	if _, err := sync(); err != nil {
		return fmt.Errorf("incremental sync: %w", err)
	}
	after, err := distinctCounts(ctx, path, incremental)
	if err != nil {
		return err
	}
	for t := range incremental {
		if after[t] != before[t] {
			return fmt.Errorf("table %s: %v rows before and %v after an incremental sync of unchanged data", t, before[t], after[t])
		}
	}
	return nil
}

// contractSource is the source the full extract syncs, with the tables
// checked for an incremental sync (and their cursor columns).
func contractSource(s connectortest.Suite) (config.Source, map[string]string) {
	name := s.Registration.Manifest.Name
	src := config.Source{Name: "contract", Connector: name, Config: s.Config, Tables: s.Tables, TableOptions: map[string]config.TableOptions{}}
	incremental := map[string]string{}
	for t, o := range s.TableOptions {
		src.TableOptions[t] = o
		if o.Incremental {
			incremental[t] = ""
		}
	}
	for t, col := range s.Incremental {
		o := src.TableOptions[t]
		o.IncrementalKey = col
		src.TableOptions[t] = o
		incremental[t] = col
	}
	return src, incremental
}

// distinctCounts returns "rows/distinct rows" per table.
func distinctCounts(ctx context.Context, path string, tables map[string]string) (map[string]string, error) {
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	out := map[string]string{}
	for t := range tables {
		var n, d int64
		if err := db.QueryRowContext(ctx, `SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT * FROM "`+t+`")) FROM "`+t+`"`).Scan(&n, &d); err != nil {
			return nil, fmt.Errorf("count %s: %w", t, err)
		}
		if n != d {
			return nil, fmt.Errorf("table %s holds %d rows but %d distinct", t, n, d)
		}
		out[t] = fmt.Sprint(n)
	}
	return out, nil
}

func noSecretInFiles(s connectortest.Suite, root string) error {
	secrets := s.SecretValues()
	if len(secrets) == 0 {
		return nil
	}
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, sec := range secrets {
			if sec != "" && strings.Contains(string(b), sec) {
				return fmt.Errorf("file %s contains a secret", p)
			}
		}
		return nil
	})
}
