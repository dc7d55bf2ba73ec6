package connectors

import (
	"fmt"
	"slices"
	"strings"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// ResolveTables applies the kit's one name rule (schemas.NameKey) to what a
// discovery returned, the same way for every connector, and returns the
// tables to sync plus what was left out and why.
//
//   - A name that cannot be a view name (schemas.ValidateName) is skipped.
//   - Of tables whose names collide (equal without regard to case, as
//     DuckDB compares view names), one is kept and every other is skipped
//     with a reason naming the kept one. The kept one is the table already
//     published under that name (published reports it; nil means none is),
//     else the name that sorts first byte by byte: the choice does not
//     depend on the order the source listed its tables in, and a table
//     added later never displaces the one the analyst already queries.
//
// Kept tables stay in the order they came in.
func ResolveTables(tables []TableInfo, published func(name string) bool) (kept []TableInfo, skipped []string) {
	valid := make([]int, 0, len(tables))
	for i, t := range tables {
		if err := schemas.ValidateName("table", t.Name); err != nil {
			skipped = append(skipped, fmt.Sprintf("table %q: %v; rename it at the source or in the connector's config", t.Name, err))
			continue
		}
		valid = append(valid, i)
	}
	if !hasCollision(tables, valid) {
		// The common case: one scan, no state read, the order kept.
		for _, i := range valid {
			kept = append(kept, tables[i])
		}
		return kept, skipped
	}
	// Order of preference: published first, then byte order.
	pref := slices.Clone(valid)
	isPub := map[int]bool{}
	if published != nil {
		for _, i := range valid {
			isPub[i] = published(tables[i].Name)
		}
	}
	slices.SortStableFunc(pref, func(a, b int) int {
		if isPub[a] != isPub[b] {
			if isPub[a] {
				return -1
			}
			return 1
		}
		return strings.Compare(tables[a].Name, tables[b].Name)
	})
	names := make([]string, len(pref))
	for k, i := range pref {
		names[k] = tables[i].Name
	}
	lost := map[int]string{}
	for k, j := range schemas.Collisions(names) {
		if j >= 0 {
			lost[pref[k]] = names[j]
		}
	}
	for _, i := range valid {
		if other, ok := lost[i]; ok {
			skipped = append(skipped, fmt.Sprintf("table %q: its name collides with table %q (view names are compared without regard to case); only %q is published: rename one of them at the source or in the connector's config",
				tables[i].Name, other, other))
			continue
		}
		kept = append(kept, tables[i])
	}
	return kept, skipped
}

// hasCollision reports whether any two of the valid tables collide, so the
// published state is only asked for when it decides something.
func hasCollision(tables []TableInfo, valid []int) bool {
	seen := make(map[string]bool, len(valid))
	for _, i := range valid {
		k := schemas.NameKey(tables[i].Name)
		if seen[k] {
			return true
		}
		seen[k] = true
	}
	return false
}

// Columns is the name rule applied to one table's columns: of columns whose
// names collide (equal without regard to case, as DuckDB compares column
// names), the first in schema order is kept and every later one is left out
// of the table. The zero value (and a schema without collisions) keeps
// every column.
type Columns struct {
	// Raw is the schema the connector delivers; Schema the one published.
	Raw, Schema *arrow.Schema
	// Keep are the indexes of Raw's kept columns; nil keeps all.
	Keep []int
	// Skipped says which columns were left out and why.
	Skipped []string
}

// ResolveColumns applies the name rule to the columns of table's schema s.
func ResolveColumns(table string, s *arrow.Schema) Columns {
	c := Columns{Raw: s, Schema: s}
	if s == nil {
		return c
	}
	names := make([]string, s.NumFields())
	for i, f := range s.Fields() {
		names[i] = f.Name
	}
	lost := schemas.Collisions(names)
	if !slices.ContainsFunc(lost, func(j int) bool { return j >= 0 }) {
		return c
	}
	var fields []arrow.Field
	for i, j := range lost {
		if j >= 0 {
			c.Skipped = append(c.Skipped, fmt.Sprintf("table %q, column %q: its name collides with column %q (column names are compared without regard to case); only %q is published: rename one of them at the source",
				table, names[i], names[j], names[j]))
			continue
		}
		c.Keep = append(c.Keep, i)
		fields = append(fields, s.Field(i))
	}
	md := s.Metadata()
	c.Schema = arrow.NewSchema(fields, &md)
	return c
}

// Project returns rec with only the kept columns, under the published
// schema; the caller releases it. A batch whose schema is not Raw is an
// error naming both.
func (c Columns) Project(table string, rec arrow.RecordBatch) (arrow.RecordBatch, error) {
	if !rec.Schema().Equal(c.Raw) {
		return nil, fmt.Errorf("read %s: batch schema does not match the declared schema:\n got: %s\nwant: %s", table, rec.Schema(), c.Raw)
	}
	if c.Keep == nil {
		rec.Retain()
		return rec, nil
	}
	cols := make([]arrow.Array, len(c.Keep))
	for k, i := range c.Keep {
		cols[k] = rec.Column(i)
	}
	return array.NewRecordBatch(c.Schema, cols, rec.NumRows()), nil
}
