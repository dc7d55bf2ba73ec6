package tests

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync/atomic"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// fixture is a test connector whose tables misbehave on purpose.
type fixture struct {
	caps connectors.Capability
	// breakTables makes these tables fail (error) or panic mid-read.
	fail  map[string]string // table -> "error" | "panic"
	calls atomic.Int64
	// remotePath, when set, is far_away's path in the remote catalog.
	remotePath atomic.Pointer[[]string]
}

var fixtureSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "label", Type: arrow.BinaryTypes.String, Nullable: true},
}, nil)

const fixtureManifest = `name: fixture
version: "0.1.0"
description: "Test connector with good, empty, failing, panicking and remote tables"
capabilities: [discover, read, remote]
config:
  rows:
    type: integer
    default: 1000
`

func (f *fixture) Capabilities() connectors.Capability { return f.caps }

func (f *fixture) Discover(context.Context) ([]connectors.TableInfo, error) {
	out := []connectors.TableInfo{
		{Name: "good", Schema: fixtureSchema, Capabilities: connectors.Read, Description: "good rows"},
		{Name: "empty", Schema: fixtureSchema, Capabilities: connectors.Read, Description: "no rows"},
		{Name: "broken", Schema: fixtureSchema, Capabilities: connectors.Read, Description: "sometimes fails"},
		{Name: "panicky", Schema: fixtureSchema, Capabilities: connectors.Read, Description: "sometimes panics"},
	}
	if f.caps.Has(connectors.Remote) {
		path := []string{"in.c-main", "far-away"}
		if p := f.remotePath.Load(); p != nil {
			path = *p
		}
		out = append(out, connectors.TableInfo{Name: "far_away", Capabilities: connectors.Remote, Description: "lives in the remote catalog",
			RemotePath: path, Schema: fixtureSchema})
	}
	return out, nil
}

func (f *fixture) Read(ctx context.Context, table string, opts connectors.ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(yield func(arrow.RecordBatch, error) bool) {
		f.calls.Add(1)
		n := int64(1000)
		if table == "empty" {
			return
		}
		for start := int64(0); start < n; start += 250 {
			if start == 500 {
				switch f.fail[table] {
				case "error":
					yield(nil, errors.New("source said 503"))
					return
				case "panic":
					panic("fixture: boom")
				}
			}
			b := array.NewRecordBuilder(memory.DefaultAllocator, fixtureSchema)
			for i := start; i < start+250; i++ {
				b.Field(0).(*array.Int64Builder).Append(i)
				b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("%s-%d", table, i))
			}
			rec := b.NewRecordBatch()
			b.Release()
			ok := yield(rec, nil)
			rec.Release()
			if !ok {
				return
			}
		}
	}
}

func (f *fixture) Remote(context.Context) (connectors.RemoteAttachInfo, error) {
	return connectors.RemoteAttachInfo{Extension: "keboola", URL: "https://connection.keboola.com/", TokenEnv: "KEBOOLA_STORAGE_TOKEN", Alias: "kbc"}, nil
}

func fixtureRegistry(f *fixture) *connectors.Registry {
	r := connectors.NewRegistry()
	r.MustRegisterManifest("tests/fixture/connector.yaml", []byte(fixtureManifest), func(connectors.Config) (connectors.Connector, error) { return f, nil })
	return r
}
