package schemas

import (
	"fmt"
	"regexp"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Hidden columns of partitioned tables. Every row carries the version of
// the change that wrote it, whether that change deleted (or emptied) its key
// in this table, and the change's event number (the tie-break between two
// changes of one version). The published view keeps, per key, only the rows
// of the newest change and hides these columns.
const (
	VersionColumn = "_agnes_version"
	DeletedColumn = "_agnes_deleted"
	EventColumn   = "_agnes_event"
)

// HeaderMonth is the partition (YYYY-MM) of every row of a data message of a
// partitioned table; HeaderKeyColumn names the table's key-group column.
const (
	HeaderMonth     = "Agnes-Month"
	HeaderKeyColumn = "Agnes-Key-Column"
)

// StreamRun is the run id of data published for pushed events: they belong
// to no sync run and are published continuously.
const StreamRun = "stream"

var monthRE = regexp.MustCompile(`^[0-9]{4}-(0[1-9]|1[0-2])$`)

// Month is the partition name of t: its UTC year and month.
func Month(t time.Time) string { return t.UTC().Format("2006-01") }

// ValidateMonth checks a partition name.
func ValidateMonth(m string) error {
	if !monthRE.MatchString(m) {
		return fmt.Errorf("partition %q is not a month (YYYY-MM)", m)
	}
	return nil
}

// PartitionedSchema is the schema stored for a partitioned table: the
// declared columns followed by the hidden ones.
func PartitionedSchema(s *arrow.Schema) *arrow.Schema {
	fields := append(s.Fields(),
		arrow.Field{Name: VersionColumn, Type: arrow.PrimitiveTypes.Int64},
		arrow.Field{Name: DeletedColumn, Type: arrow.FixedWidthTypes.Boolean},
		arrow.Field{Name: EventColumn, Type: arrow.PrimitiveTypes.Int64},
	)
	md := s.Metadata()
	return arrow.NewSchema(fields, &md)
}

// CheckPartitioned checks that a partitioned table's schema can hold its
// rows and its markers: the key column is a string, the time column a
// timestamp, every other column nullable (a marker row has only the key and
// the time), and no column uses a hidden name.
func CheckPartitioned(s *arrow.Schema, keyCol, timeCol string) error {
	if s == nil {
		return fmt.Errorf("a partitioned table needs a declared schema")
	}
	var haveKey, haveTime bool
	for _, f := range s.Fields() {
		switch f.Name {
		case VersionColumn, DeletedColumn, EventColumn, "month":
			return fmt.Errorf("column %q is reserved in partitioned tables", f.Name)
		case keyCol:
			if f.Type.ID() != arrow.STRING {
				return fmt.Errorf("key column %q must be a string, not %s", keyCol, f.Type)
			}
			haveKey = true
		case timeCol:
			if f.Type.ID() != arrow.TIMESTAMP {
				return fmt.Errorf("time column %q must be a timestamp, not %s", timeCol, f.Type)
			}
			haveTime = true
		default:
			if !f.Nullable {
				return fmt.Errorf("column %q must be nullable: a key deleted from the table leaves a marker row with only %s and %s", f.Name, keyCol, timeCol)
			}
		}
	}
	if !haveKey {
		return fmt.Errorf("key column %q is not a column of the table", keyCol)
	}
	if !haveTime {
		return fmt.Errorf("time column %q is not a column of the table", timeCol)
	}
	return nil
}

// ChangeRows turns one change's rows of one table into stored rows: rec
// (which may be nil or empty) with the hidden columns appended, or, when the
// change deletes the key or has no rows for this table, one marker row
// carrying only the key and the time. Every row of rec must carry the key.
func ChangeRows(schema *arrow.Schema, keyCol, timeCol, key string, at time.Time, version int64, deleted bool, event int64, rec arrow.RecordBatch, mem memory.Allocator) (arrow.RecordBatch, error) {
	out := PartitionedSchema(schema)
	if deleted || rec == nil || rec.NumRows() == 0 {
		b := array.NewRecordBuilder(mem, out)
		defer b.Release()
		for i, f := range schema.Fields() {
			switch f.Name {
			case keyCol:
				b.Field(i).(*array.StringBuilder).Append(key)
			case timeCol:
				ts := f.Type.(*arrow.TimestampType)
				v, err := arrow.TimestampFromTime(at, ts.Unit)
				if err != nil {
					return nil, err
				}
				b.Field(i).(*array.TimestampBuilder).Append(v)
			default:
				b.Field(i).AppendNull()
			}
		}
		n := schema.NumFields()
		b.Field(n).(*array.Int64Builder).Append(version)
		b.Field(n + 1).(*array.BooleanBuilder).Append(true)
		b.Field(n + 2).(*array.Int64Builder).Append(event)
		return b.NewRecordBatch(), nil
	}
	if !rec.Schema().Equal(schema) {
		return nil, fmt.Errorf("rows do not match the declared schema:\n got: %s\nwant: %s", rec.Schema(), schema)
	}
	idx := schema.FieldIndices(keyCol)
	keys := rec.Column(idx[0]).(*array.String)
	for i := range keys.Len() {
		if keys.IsNull(i) || keys.Value(i) != key {
			return nil, fmt.Errorf("row %d has %s %q, the change is for %q", i, keyCol, keys.ValueStr(i), key)
		}
	}
	// The partition is the month of the declared time column: every row
	// must lie in the change's month.
	tcol, ok := rec.Column(schema.FieldIndices(timeCol)[0]).(*array.Timestamp)
	if !ok {
		return nil, fmt.Errorf("time column %q is not a timestamp", timeCol)
	}
	unit := schema.Field(schema.FieldIndices(timeCol)[0]).Type.(*arrow.TimestampType).Unit
	month := Month(at)
	for i := range tcol.Len() {
		if tcol.IsNull(i) {
			return nil, fmt.Errorf("row %d has no %s (it picks the month partition)", i, timeCol)
		}
		if m := Month(tcol.Value(i).ToTime(unit)); m != month {
			return nil, fmt.Errorf("row %d has %s in %s, the change's data time is in %s", i, timeCol, m, month)
		}
	}
	n := int(rec.NumRows())
	vb := array.NewInt64Builder(mem)
	db := array.NewBooleanBuilder(mem)
	eb := array.NewInt64Builder(mem)
	defer vb.Release()
	defer db.Release()
	defer eb.Release()
	for range n {
		vb.Append(version)
		db.Append(false)
		eb.Append(event)
	}
	cols := append([]arrow.Array{}, rec.Columns()...)
	va, da, ea := vb.NewArray(), db.NewArray(), eb.NewArray()
	defer va.Release()
	defer da.Release()
	defer ea.Release()
	cols = append(cols, va, da, ea)
	return array.NewRecordBatch(out, cols, int64(n)), nil
}

// ConcatBatches joins batches of one schema into one; it releases nothing.
func ConcatBatches(schema *arrow.Schema, recs []arrow.RecordBatch, mem memory.Allocator) (arrow.RecordBatch, error) {
	if len(recs) == 1 {
		recs[0].Retain()
		return recs[0], nil
	}
	cols := make([]arrow.Array, schema.NumFields())
	var rows int64
	for _, r := range recs {
		rows += r.NumRows()
	}
	defer func() {
		for _, c := range cols {
			if c != nil {
				c.Release()
			}
		}
	}()
	for i := range cols {
		parts := make([]arrow.Array, len(recs))
		for j, r := range recs {
			parts[j] = r.Column(i)
		}
		c, err := array.Concatenate(parts, mem)
		if err != nil {
			return nil, fmt.Errorf("concatenate column %s: %w", schema.Field(i).Name, err)
		}
		cols[i] = c
	}
	return array.NewRecordBatch(schema, cols, rows), nil
}

// CheckStored checks the schema of a stored batch or part of a partitioned
// table: the hidden columns last, the key column a string.
func CheckStored(s *arrow.Schema, keyCol string) error {
	n := s.NumFields()
	if n < 4 || s.Field(n-3).Name != VersionColumn || s.Field(n-2).Name != DeletedColumn || s.Field(n-1).Name != EventColumn {
		return fmt.Errorf("a partitioned batch must end with the columns %s, %s, %s", VersionColumn, DeletedColumn, EventColumn)
	}
	if idx := s.FieldIndices(keyCol); len(idx) != 1 || s.Field(idx[0]).Type.ID() != arrow.STRING {
		return fmt.Errorf("key column %q is not a string column of the batch", keyCol)
	}
	return nil
}
