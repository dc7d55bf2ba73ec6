package tests

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/extractcheck"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/google/uuid"
)

// remoteOnly is a BigQuery-like connector: it discovers tables that live in
// a remote catalog and publishes no data.
type remoteOnly struct{}

func (remoteOnly) Capabilities() connectors.Capability {
	return connectors.Discover | connectors.Remote
}
func (remoteOnly) Discover(context.Context) ([]connectors.TableInfo, error) {
	return []connectors.TableInfo{
		{Name: "sales_orders", Capabilities: connectors.Remote, Description: "BigQuery: sales.orders", RemotePath: []string{"sales", "orders"}},
		{Name: "sales_refunds", Capabilities: connectors.Remote, Description: "BigQuery: sales.refunds", RemotePath: []string{"sales", "refunds"}},
	}, nil
}
func (remoteOnly) Remote(context.Context) (connectors.RemoteAttachInfo, error) {
	return connectors.RemoteAttachInfo{Extension: "bigquery", URL: "project=my-project", Alias: "bq"}, nil
}

// TestRemoteOnlySource: a source with only remote tables passes the extract
// contract: remote _meta rows with zero rows and size, views over the
// attached alias, one _remote_attach row, no Parquet.
func TestRemoteOnlySource(t *testing.T) {
	dir := t.TempDir()
	reg := connectors.NewRegistry()
	reg.MustRegisterManifest("tests/bq.yaml", []byte("name: bq\nversion: \"1.0.0\"\ndescription: remote only\ncapabilities: [discover, remote]\n"),
		func(connectors.Config) (connectors.Connector, error) { return remoteOnly{}, nil })
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Sources = []config.Source{{Name: "warehouse", Connector: "bq"}}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: reg, DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := stack.Sync(ctx, st.JS, schemas.SyncRequest{RunID: uuid.NewString(), Source: "warehouse"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := rep.Stats(); st.TablesExtracted != 2 || st.TablesFailed != 0 || st.Rows != 0 {
		t.Errorf("stats %+v", st)
	}
	x, err := extractcheck.Verify(ctx, filepath.Join(dir, "extracts", "warehouse", "extract.duckdb"))
	if err != nil {
		t.Fatalf("contract: %v", err)
	}
	if len(x.Meta) != 2 || len(x.Views) != 2 || len(x.Counts) != 0 {
		t.Errorf("meta %+v views %v", x.Meta, x.Views)
	}
	for _, m := range x.Meta {
		if m.QueryMode != "remote" || m.Rows != 0 || m.SizeBytes != 0 {
			t.Errorf("row %+v", m)
		}
	}
	if len(x.Remote) != 1 || x.Remote[0] != (extractcheck.RemoteRow{Alias: "bq", Extension: "bigquery", URL: "project=my-project", TokenEnv: ""}) {
		t.Errorf("_remote_attach %+v", x.Remote)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "extracts", "warehouse", "data", "*")); len(m) != 0 {
		t.Errorf("a remote-only source wrote data files: %v", m)
	}
}

// TestSelectiveExtract: syncing one table leaves the others' published data
// and _meta rows in the new extract.
func TestSelectiveExtract(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	cfg := writeConfig(t, root, 3000, 300)
	mustSync(t, cfg, dataDir)
	before, err := extractcheck.Verify(context.Background(), filepath.Join(dataDir, "extracts", "demo", "extract.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	out := mustSync(t, cfg, dataDir, "--tables", "customers")
	x, err := extractcheck.Verify(context.Background(), filepath.Join(dataDir, "extracts", "demo", "extract.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	if x.Counts["orders"] != 3000 || x.Counts["customers"] != 300 {
		t.Errorf("counts %v\n%s", x.Counts, out)
	}
	for i, m := range x.Meta {
		if m.Table == "orders" && !m.ExtractedAt.Equal(before.Meta[i].ExtractedAt) {
			t.Errorf("orders was not synced, yet its extracted_at moved from %s to %s", before.Meta[i].ExtractedAt, m.ExtractedAt)
		}
		if m.Table == "customers" && !m.ExtractedAt.After(before.Meta[i].ExtractedAt) {
			t.Errorf("customers was synced, yet its extracted_at stayed %s", m.ExtractedAt)
		}
	}
}

// TestLargeDataBatching: reading a large table holds one batch at a time.
func TestLargeDataBatching(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	c := demo.New(demo.Options{Rows: 300_000, Seed: 1, Mem: mem})
	var peak, rows int64
	for rec, err := range c.Read(context.Background(), "orders", connectors.ReadOptions{BatchSize: 10_000}) {
		if err != nil {
			t.Fatal(err)
		}
		rows += rec.NumRows()
		peak = max(peak, int64(mem.CurrentAlloc()))
	}
	if rows != 300_000 {
		t.Fatalf("%d rows", rows)
	}
	// One 10k-row batch of orders is about 1 MiB; the whole table ~30 MiB.
	if peak > 4<<20 {
		t.Errorf("peak Arrow memory %d bytes while reading 300k rows in 10k batches: not constant", peak)
	}
	t.Logf("peak Arrow memory %d KiB for 300k rows", peak>>10)
}

func TestBuiltinRegistry(t *testing.T) {
	r := builtin.Registry()
	if _, err := r.Lookup("demo"); err != nil {
		t.Fatal(err)
	}
}
