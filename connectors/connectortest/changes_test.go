package connectortest

import (
	"context"
	"iter"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var issuesSchema = arrow.NewSchema([]arrow.Field{
	{Name: "key", Type: arrow.BinaryTypes.String},
	{Name: "created", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}},
}, nil)

// changer is a connector backfilling one partitioned table with the
// changes it is given.
type changer struct{ changes func() []connectors.Change }

func (changer) Capabilities() connectors.Capability { return connectors.Discover | connectors.Read }

func (changer) Discover(context.Context) ([]connectors.TableInfo, error) {
	return []connectors.TableInfo{{Name: "issues", Schema: issuesSchema, Capabilities: connectors.Read,
		Partition: &connectors.Partitioning{KeyColumn: "key", TimeColumn: "created"}}}, nil
}

func (c changer) Changes(context.Context, connectors.ReadOptions) iter.Seq2[connectors.Change, error] {
	return func(yield func(connectors.Change, error) bool) {
		for _, ch := range c.changes() {
			if !yield(ch, nil) {
				return
			}
		}
	}
}

func change(key string, version int64, table string) connectors.Change {
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	b := array.NewRecordBuilder(memory.DefaultAllocator, issuesSchema)
	defer b.Release()
	b.Field(0).(*array.StringBuilder).Append(key)
	b.Field(1).(*array.TimestampBuilder).Append(arrow.Timestamp(at.UnixMicro()))
	return connectors.Change{Key: key, Time: at, Version: version, Tables: map[string]arrow.RecordBatch{table: b.NewRecordBatch()}}
}

// TestChangesCheck: the Changes check passes a sound backfill and names
// what is wrong with a broken one.
func TestChangesCheck(t *testing.T) {
	const manifest = "name: changer\nversion: \"1.0.0\"\ndescription: test\ncapabilities: [discover, read]\n"
	cases := []struct {
		name    string
		changes func() []connectors.Change
		want    string // "" passes
	}{
		{"sound", func() []connectors.Change {
			return []connectors.Change{change("A-1", 1, "issues"), change("A-2", 1, "issues")}
		}, ""},
		{"undeclared table", func() []connectors.Change { return []connectors.Change{change("A-1", 1, "nope")} }, "does not list as partitioned"},
		{"version reused", func() []connectors.Change {
			return []connectors.Change{change("A-1", 3, "issues"), change("A-1", 3, "issues")}
		}, "twice at version 3"},
	}
	for _, c := range cases {
		reg := connectors.NewRegistry()
		reg.MustRegisterManifest("changer.yaml", []byte(manifest), func(connectors.Config) (connectors.Connector, error) {
			return changer{changes: c.changes}, nil
		})
		r, err := reg.Lookup("changer")
		if err != nil {
			t.Fatal(err)
		}
		err = Suite{Registration: r, Config: map[string]any{}}.changes(context.Background())
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: got %v, want an error with %q", c.name, err, c.want)
		}
	}
}
