package schemas

import (
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

var partTS = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}

var partSchema = arrow.NewSchema([]arrow.Field{
	{Name: "issue_key", Type: arrow.BinaryTypes.String},
	{Name: "issue_created", Type: partTS},
	{Name: "body", Type: arrow.BinaryTypes.String, Nullable: true},
}, nil)

func partRows(t *testing.T, mem memory.Allocator, key string, bodies ...string) arrow.RecordBatch {
	t.Helper()
	b := array.NewRecordBuilder(mem, partSchema)
	defer b.Release()
	for _, body := range bodies {
		b.Field(0).(*array.StringBuilder).Append(key)
		b.Field(1).(*array.TimestampBuilder).Append(arrow.Timestamp(time.Date(2024, 3, 5, 0, 0, 0, 0, time.UTC).UnixMicro()))
		b.Field(2).(*array.StringBuilder).Append(body)
	}
	return b.NewRecordBatch()
}

func TestChangeRows(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	at := time.Date(2024, 3, 5, 0, 0, 0, 0, time.UTC)
	rec := partRows(t, mem, "A-1", "x", "y")
	defer rec.Release()
	out, err := ChangeRows(partSchema, "issue_key", "issue_created", "A-1", at, 7, false, 3, rec, mem)
	if err != nil {
		t.Fatal(err)
	}
	if out.NumRows() != 2 || out.NumCols() != 6 || !out.Schema().Equal(PartitionedSchema(partSchema)) {
		t.Fatalf("stored rows: %d rows, schema %s", out.NumRows(), out.Schema())
	}
	if v := out.Column(3).(*array.Int64).Value(1); v != 7 {
		t.Errorf("version %d", v)
	}
	if d := out.Column(4).(*array.Boolean).Value(0); d {
		t.Error("rows marked deleted")
	}
	out.Release()

	// No rows, or a delete: one marker row with the key and the time only.
	for _, deleted := range []bool{false, true} {
		m, err := ChangeRows(partSchema, "issue_key", "issue_created", "A-1", at, 8, deleted, 4, nil, mem)
		if err != nil {
			t.Fatal(err)
		}
		if m.NumRows() != 1 || !m.Column(4).(*array.Boolean).Value(0) || m.Column(2).IsValid(0) ||
			m.Column(0).(*array.String).Value(0) != "A-1" || m.Column(1).(*array.Timestamp).Value(0) != arrow.Timestamp(at.UnixMicro()) {
			t.Errorf("marker row wrong: %v", m)
		}
		m.Release()
	}

	// Rows outside the change's month are refused.
	if _, err := ChangeRows(partSchema, "issue_key", "issue_created", "A-1", at.AddDate(0, 1, 0), 1, false, 1, rec, mem); err == nil || !strings.Contains(err.Error(), "2024-03") {
		t.Errorf("rows of another month: err = %v", err)
	}

	// Rows of another key are refused.
	other := partRows(t, mem, "B-2", "z")
	defer other.Release()
	if _, err := ChangeRows(partSchema, "issue_key", "issue_created", "A-1", at, 1, false, 1, other, mem); err == nil || !strings.Contains(err.Error(), "B-2") {
		t.Errorf("rows of another key: err = %v", err)
	}
}

func TestCheckPartitioned(t *testing.T) {
	if err := CheckPartitioned(partSchema, "issue_key", "issue_created"); err != nil {
		t.Fatal(err)
	}
	cases := map[string]*arrow.Schema{
		"must be nullable": arrow.NewSchema([]arrow.Field{{Name: "issue_key", Type: arrow.BinaryTypes.String},
			{Name: "issue_created", Type: partTS}, {Name: "body", Type: arrow.BinaryTypes.String}}, nil),
		"reserved": arrow.NewSchema([]arrow.Field{{Name: "issue_key", Type: arrow.BinaryTypes.String},
			{Name: "issue_created", Type: partTS}, {Name: "_agnes_version", Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, nil),
		"must be a timestamp": arrow.NewSchema([]arrow.Field{{Name: "issue_key", Type: arrow.BinaryTypes.String},
			{Name: "issue_created", Type: arrow.BinaryTypes.String}}, nil),
		"key column \"issue_key\" is not": arrow.NewSchema([]arrow.Field{{Name: "issue_created", Type: partTS}}, nil),
	}
	for want, s := range cases {
		if err := CheckPartitioned(s, "issue_key", "issue_created"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want error containing %q, got %v", want, err)
		}
	}
	if err := CheckStored(PartitionedSchema(partSchema), "issue_key"); err != nil {
		t.Error(err)
	}
	if err := CheckStored(partSchema, "issue_key"); err == nil {
		t.Error("a batch without the hidden columns passed CheckStored")
	}
	for _, m := range []string{"2024-13", "24-01", "2024-1", "2024-01/..", ""} {
		if ValidateMonth(m) == nil {
			t.Errorf("month %q accepted", m)
		}
	}
	if Month(time.Date(2024, 2, 29, 23, 0, 0, 0, time.FixedZone("x", -3600*5))) != "2024-03" {
		t.Error("Month does not use UTC")
	}
}
