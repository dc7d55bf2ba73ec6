package stack

import (
	"os"
	"reflect"
	"testing"

	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/producers"
)

// TestProducerSources: every table option of the config reaches the
// producer's policy (a field added to one and not the other fails here).
func TestProducerSources(t *testing.T) {
	cfg := &config.Config{Sources: []config.Source{{Name: "s", Connector: "c", Config: map[string]any{"k": "v"}, Tables: []string{"a"},
		SchemaPolicy: "freeze", TableOptions: map[string]config.TableOptions{"a": {SchemaPolicy: "evolve", IncrementalKey: "at",
			PrimaryKey: []string{"id"}, Incremental: true, QueryMode: "materialized", Query: "SELECT 1"}}}}}
	got, err := ProducerSources(cfg)("s")
	if err != nil {
		t.Fatal(err)
	}
	want := producers.Source{Name: "s", Connector: "c", Config: map[string]any{"k": "v"}, Tables: []string{"a"}, SchemaPolicy: "freeze",
		Options: map[string]producers.TablePolicy{"a": {SchemaPolicy: "evolve", IncrementalKey: "at", PrimaryKey: []string{"id"},
			Incremental: true, QueryMode: "materialized", Query: "SELECT 1"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	// (Schedule is the scheduler's, not the producer's.)
	if n, m := reflect.TypeOf(config.TableOptions{}).NumField()-1, reflect.TypeOf(producers.TablePolicy{}).NumField(); n != m {
		t.Errorf("config.TableOptions has %d fields, producers.TablePolicy %d: translate the new one", n, m)
	}
	if got.Table("b").SchemaPolicy != "freeze" || got.Table("a").SchemaPolicy != "evolve" {
		t.Error("table policy defaults wrong")
	}
	if _, err := ProducerSources(cfg)("nope"); err == nil {
		t.Error("unknown source gave no error")
	}
}

// TestWriterNameDefault: writers of replicas that are given no name are
// told apart by their host name.
func TestWriterNameDefault(t *testing.T) {
	h, err := os.Hostname()
	if err != nil || h == "" {
		t.Fatalf("no host name: %v", err)
	}
	if got := writerName("", 1); got != h+"-2" {
		t.Errorf("writerName(\"\", 1) = %q, want %q", got, h+"-2")
	}
	if got := writerName("w", 0); got != "w-1" {
		t.Errorf("writerName(w, 0) = %q", got)
	}
}
