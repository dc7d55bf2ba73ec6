package schemas

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
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

// TestUntrustedValuesAreClipped: a forged 200 KB run id or name costs a
// bounded message, which still says how long the value was.
func TestUntrustedValuesAreClipped(t *testing.T) {
	huge := strings.Repeat("x", 200<<10)
	for _, err := range []error{ValidateRunID(huge), ValidateName("table", huge)} {
		if err == nil || len(err.Error()) > 400 || !strings.Contains(err.Error(), "(204800 bytes)") {
			t.Errorf("error of %d bytes: %.200s", len(fmt.Sprint(err)), err)
		}
	}
	h := DataHeader("00000000-0000-4000-8000-000000000001", "src", "t", 1, 0, 1)
	h[HeaderSeq] = []string{huge}
	if _, err := ParseDataHeader(h); err == nil || len(err.Error()) > 400 {
		t.Errorf("header error of %d bytes", len(fmt.Sprint(err)))
	}
	if got := Clip("short"); got != `"short"` {
		t.Errorf("Clip(short) = %s", got)
	}
	if got := Clip(strings.Repeat("é", 100)); !strings.HasSuffix(got, "…(200 bytes)") || !utf8.ValidString(got) {
		t.Errorf("Clip cuts a rune: %s", got)
	}
}
