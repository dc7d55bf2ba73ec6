package schemas

import (
	"encoding/json"
	"fmt"
)

// StateBucket is the JetStream key-value bucket holding per-table state that
// must survive restarts and be shared by all processes: the last published
// schema and the incremental cursor. The finalizer writes it after an extract
// is published; producers read it before reading a table.
const StateBucket = "AGNES_STATE"

// SchemaKey is the state key of a table's last published Arrow schema.
func SchemaKey(source, table string) string { return source + "." + table + ".schema" }

// CursorKey is the state key of a table's incremental cursor.
func CursorKey(source, table string) string { return source + "." + table + ".cursor" }

// SourceCursorColumn is the Column of a cursor kept by the source itself
// (connectors.SourceCursorReader): Value is the connector's own position.
const SourceCursorColumn = "_agnes_source_cursor"

// Cursor is a table's incremental position: the greatest value of the cursor
// column among published rows, and the identities of the rows that hold
// exactly that value. Connectors return rows with cursor >= Value; the runtime
// drops the rows whose identity is in Boundary, so rows sharing the boundary
// value arrive exactly once.
type Cursor struct {
	Column string `json:"column"`
	// Type is the Arrow type of the column, which decides how values compare.
	Type  string `json:"type"`
	Value string `json:"value"`
	// Boundary holds 64-bit row identities (hex) of the rows whose cursor
	// equals Value: primary-key values when the table has a key, else all values.
	Boundary []string `json:"boundary,omitempty"`
}

// Encode marshals c.
func (c Cursor) Encode() ([]byte, error) { return json.Marshal(c) }

// DecodeCursor unmarshals a cursor.
func DecodeCursor(b []byte) (Cursor, error) {
	var c Cursor
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("decode cursor: %w", err)
	}
	return c, nil
}

// Write modes of a table's result.
const (
	// WriteReplace: the run's rows are the whole table.
	WriteReplace = "replace"
	// WriteMerge: the run's rows replace rows with the same primary key
	// (latest wins) and the other previous rows stay.
	WriteMerge = "merge"
	// WriteAppend: the run's rows are added to the previous rows.
	WriteAppend = "append"
	// WritePartitioned: the run's rows are changes of key groups, added to
	// the table's monthly partitions; per key the newest change wins.
	WritePartitioned = "partitioned"
)
