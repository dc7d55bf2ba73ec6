package schemas

import (
	"slices"
	"testing"
)

func TestCollisions(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  []int
	}{
		{nil, []int{}},
		{[]string{"a", "b"}, []int{-1, -1}},
		{[]string{"events", "Events", "EVENTS", "orders"}, []int{-1, 0, 0, -1}},
		{[]string{"id", "ID"}, []int{-1, 0}},
		{[]string{"x", "x"}, []int{-1, 0}},
		// Unicode case folding: a pair DuckDB may or may not merge is
		// treated as colliding, never missed.
		{[]string{"straße", "STRASSE", "Ärger", "ärger"}, []int{-1, -1, -1, 2}},
	} {
		if got := Collisions(tc.names); !slices.Equal(got, tc.want) {
			t.Errorf("Collisions(%q) = %v, want %v", tc.names, got, tc.want)
		}
	}
	if NameKey("Events") != NameKey("eVENTS") || NameKey("events") == NameKey("event") {
		t.Error("NameKey does not compare without regard to case")
	}
}
