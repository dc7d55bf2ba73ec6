package schemas

import (
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
)

// DiffSchemas describes in plain words how next differs from prev: added,
// removed and type-changed columns (nullability included), in column order.
// It returns nil when they have the same columns.
func DiffSchemas(prev, next *arrow.Schema) []string {
	if prev == nil || next == nil {
		return nil
	}
	var out []string
	old := map[string]arrow.Field{}
	for _, f := range prev.Fields() {
		old[f.Name] = f
	}
	seen := map[string]bool{}
	for _, f := range next.Fields() {
		seen[f.Name] = true
		o, ok := old[f.Name]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("added column %s (%s)", f.Name, f.Type))
		case !arrow.TypeEqual(o.Type, f.Type):
			out = append(out, fmt.Sprintf("column %s changed type from %s to %s", f.Name, o.Type, f.Type))
		case o.Nullable != f.Nullable:
			out = append(out, fmt.Sprintf("column %s changed from %s to %s", f.Name, nullability(o.Nullable), nullability(f.Nullable)))
		}
	}
	for _, f := range prev.Fields() {
		if !seen[f.Name] {
			out = append(out, fmt.Sprintf("removed column %s (%s)", f.Name, f.Type))
		}
	}
	return out
}

func nullability(n bool) string {
	if n {
		return "nullable"
	}
	return "not null"
}
