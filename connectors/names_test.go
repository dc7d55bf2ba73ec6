package connectors

import (
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

func names(ts []TableInfo) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out
}

func TestResolveTables(t *testing.T) {
	in := []TableInfo{{Name: "events"}, {Name: "orders"}, {Name: "Events"}, {Name: "bad-name"}, {Name: "EVENTS"}}
	kept, skipped := ResolveTables(in, nil)
	// Without history the name that sorts first byte by byte wins.
	if got := names(kept); !slices.Equal(got, []string{"orders", "EVENTS"}) {
		t.Errorf("kept %v", got)
	}
	all := strings.Join(skipped, "\n")
	for _, want := range []string{`table "bad-name": invalid name`, `table "events": its name collides with table "EVENTS"`, `table "Events": its name collides with table "EVENTS"`} {
		if !strings.Contains(all, want) {
			t.Errorf("skipped lacks %q:\n%s", want, all)
		}
	}
	// The choice does not depend on the order discovery listed them in.
	rev := slices.Clone(in)
	slices.Reverse(rev)
	if k, _ := ResolveTables(rev, nil); !slices.Equal(names(k), []string{"EVENTS", "orders"}) {
		t.Errorf("reversed input kept %v", names(k))
	}
	// A published table keeps its name against newcomers.
	asked := 0
	kept, skipped = ResolveTables(in, func(n string) bool { asked++; return n == "events" })
	if got := names(kept); !slices.Equal(got, []string{"events", "orders"}) {
		t.Errorf("kept %v with events published", got)
	}
	if !strings.Contains(strings.Join(skipped, "\n"), `table "EVENTS": its name collides with table "events"`) {
		t.Errorf("skipped %q", skipped)
	}
	// Without a collision the published state is not read.
	asked = 0
	if k, s := ResolveTables([]TableInfo{{Name: "a"}, {Name: "b"}}, func(string) bool { asked++; return false }); len(k) != 2 || s != nil || asked != 0 {
		t.Errorf("no collision: kept %v skipped %v asked %d", names(k), s, asked)
	}
}

func TestResolveColumnsAndProject(t *testing.T) {
	raw := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64}, {Name: "name", Type: arrow.BinaryTypes.String}, {Name: "ID", Type: arrow.PrimitiveTypes.Int64},
	}, nil)
	c := ResolveColumns("users", raw)
	if len(c.Skipped) != 1 || !strings.Contains(c.Skipped[0], `table "users", column "ID": its name collides with column "id"`) {
		t.Errorf("skipped %q", c.Skipped)
	}
	if c.Schema.NumFields() != 2 || c.Schema.Field(0).Name != "id" || c.Schema.Field(1).Name != "name" {
		t.Errorf("published schema %s", c.Schema)
	}
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	b := array.NewRecordBuilder(mem, raw)
	defer b.Release()
	b.Field(0).(*array.Int64Builder).AppendValues([]int64{1, 2}, nil)
	b.Field(1).(*array.StringBuilder).AppendValues([]string{"a", "b"}, nil)
	b.Field(2).(*array.Int64Builder).AppendValues([]int64{10, 20}, nil)
	rec := b.NewRecordBatch()
	defer rec.Release()
	p, err := c.Project("users", rec)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Schema().Equal(c.Schema) || p.NumRows() != 2 || p.Column(0).(*array.Int64).Value(1) != 2 {
		t.Errorf("projected %v", p)
	}
	// A batch of another shape (here the projected one) is refused with
	// both schemas named.
	if _, err := c.Project("users", p); err == nil || !strings.Contains(err.Error(), "does not match the declared schema") {
		t.Errorf("mismatch: %v", err)
	}
	p.Release()
	// Without collisions nothing changes.
	plain := ResolveColumns("t", c.Schema)
	if plain.Keep != nil || plain.Skipped != nil || plain.Schema != c.Schema {
		t.Errorf("no collision: %+v", plain)
	}
}
