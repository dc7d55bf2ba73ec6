package producers

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// tracker follows the cursor column while a table is read. With a committed
// cursor it drops the rows already published (cursor below the committed
// value, or equal to it with a known identity, or NULL); it computes the next
// cursor from the rows it keeps.
type tracker struct {
	column   string
	colIdx   int
	typ      arrow.DataType
	idIdx    []int
	prev     *schemas.Cursor
	seen     map[string]bool
	max      string
	hasMax   bool
	boundary map[string]bool
}

func newTracker(schema *arrow.Schema, column string, pk []string, prev *schemas.Cursor) (*tracker, error) {
	idx := schema.FieldIndices(column)
	if len(idx) != 1 {
		return nil, fmt.Errorf("incremental key %q is not a column of the table", column)
	}
	t := &tracker{column: column, colIdx: idx[0], typ: schema.Field(idx[0]).Type, prev: prev, boundary: map[string]bool{}}
	if _, err := t.valueKind(); err != nil {
		return nil, err
	}
	for _, k := range pk {
		i := schema.FieldIndices(k)
		if len(i) != 1 {
			return nil, fmt.Errorf("primary key column %q is not a column of the table", k)
		}
		t.idIdx = append(t.idIdx, i[0])
	}
	if t.idIdx == nil {
		for i := range schema.NumFields() {
			t.idIdx = append(t.idIdx, i)
		}
	}
	if prev != nil {
		t.seen = make(map[string]bool, len(prev.Boundary))
		for _, b := range prev.Boundary {
			t.seen[b] = true
		}
	}
	return t, nil
}

type kind int

const (
	kindInt kind = iota
	kindUint
	kindFloat
	kindText // strings, dates and timestamps in fixed-width sortable text
)

func (t *tracker) valueKind() (kind, error) {
	switch t.typ.ID() {
	case arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64:
		return kindInt, nil
	case arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64:
		return kindUint, nil
	case arrow.FLOAT32, arrow.FLOAT64:
		return kindFloat, nil
	case arrow.STRING, arrow.LARGE_STRING, arrow.DATE32, arrow.TIMESTAMP:
		return kindText, nil
	}
	return 0, fmt.Errorf("incremental key %q has type %s; use an integer, float, string, date32 or timestamp column", t.column, t.typ)
}

// value renders row i of the cursor column; ok is false for NULL.
func (t *tracker) value(col arrow.Array, i int) (string, bool) {
	if col.IsNull(i) {
		return "", false
	}
	switch c := col.(type) {
	case *array.Timestamp:
		unit := c.DataType().(*arrow.TimestampType).Unit
		layout := "2006-01-02T15:04:05.000000Z"
		if unit == arrow.Nanosecond {
			layout = "2006-01-02T15:04:05.000000000Z"
		}
		return c.Value(i).ToTime(unit).UTC().Format(layout), true
	case *array.Date32:
		return c.Value(i).ToTime().Format(time.DateOnly), true
	}
	return col.ValueStr(i), true
}

func (t *tracker) compare(a, b string) int {
	k, _ := t.valueKind()
	switch k {
	case kindInt:
		x, _ := strconv.ParseInt(a, 10, 64)
		y, _ := strconv.ParseInt(b, 10, 64)
		return cmpOrdered(x, y)
	case kindUint:
		x, _ := strconv.ParseUint(a, 10, 64)
		y, _ := strconv.ParseUint(b, 10, 64)
		return cmpOrdered(x, y)
	case kindFloat:
		x, _ := strconv.ParseFloat(a, 64)
		y, _ := strconv.ParseFloat(b, 64)
		return cmpOrdered(x, y)
	}
	return strings.Compare(a, b)
}

func cmpOrdered[T int64 | uint64 | float64](x, y T) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// identity is a 64-bit hash of the row's key columns (all columns without a key).
func (t *tracker) identity(rec arrow.RecordBatch, i int) string {
	return strconv.FormatUint(schemas.RowKey(rec, i, t.idIdx), 16)
}

// keep returns the slices of rec to publish (the caller releases them) and
// advances the next cursor over them.
func (t *tracker) keep(rec arrow.RecordBatch) []arrow.RecordBatch {
	col := rec.Column(t.colIdx)
	n := int(rec.NumRows())
	var out []arrow.RecordBatch
	start := -1
	flush := func(end int) {
		if start >= 0 {
			out = append(out, rec.NewSlice(int64(start), int64(end)))
			start = -1
		}
	}
	for i := range n {
		v, ok := t.value(col, i)
		keep := true
		if t.prev != nil {
			switch {
			case !ok:
				keep = false
			default:
				c := t.compare(v, t.prev.Value)
				keep = c > 0 || (c == 0 && !t.seen[t.identity(rec, i)])
			}
		}
		if !keep {
			flush(i)
			continue
		}
		if start < 0 {
			start = i
		}
		if !ok {
			continue
		}
		switch c := 1; {
		case !t.hasMax:
			t.max, t.hasMax = v, true
			t.boundary = map[string]bool{t.identity(rec, i): true}
		default:
			c = t.compare(v, t.max)
			if c > 0 {
				t.max = v
				t.boundary = map[string]bool{t.identity(rec, i): true}
			} else if c == 0 {
				t.boundary[t.identity(rec, i)] = true
			}
		}
	}
	flush(n)
	return out
}

// next is the cursor to commit once the kept rows are published.
func (t *tracker) next() *schemas.Cursor {
	if !t.hasMax {
		return t.prev
	}
	c := &schemas.Cursor{Column: t.column, Type: t.typ.String(), Value: t.max}
	if t.prev != nil && t.compare(t.max, t.prev.Value) == 0 {
		// Rows at the old boundary value are still at the boundary.
		for id := range t.seen {
			t.boundary[id] = true
		}
	}
	for id := range t.boundary {
		c.Boundary = append(c.Boundary, id)
	}
	slices.Sort(c.Boundary)
	return c
}
