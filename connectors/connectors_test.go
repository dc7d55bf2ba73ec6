package connectors

import (
	"context"
	"errors"
	"iter"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
)

func TestCapabilities(t *testing.T) {
	c, err := ParseCapabilities([]string{"read", "Discover", "read"})
	if err != nil {
		t.Fatal(err)
	}
	if c != Discover|Read {
		t.Errorf("got %v, want discover|read", c)
	}
	if got := c.Strings(); !slices.Equal(got, []string{"discover", "read"}) {
		t.Errorf("Strings() = %v", got)
	}
	if c.String() != "discover|read" || Capability(0).String() != "none" {
		t.Errorf("String() = %q", c.String())
	}
	if !c.Has(Read) || c.Has(Remote) || c.Has(Read|Remote) || c.Has(0) {
		t.Error("Has is wrong")
	}
	all, _ := ParseCapabilities([]string{"discover", "read", "stream", "remote", "write"})
	back, _ := ParseCapabilities(all.Strings())
	if back != all {
		t.Errorf("round trip %v != %v", back, all)
	}
	if _, err := ParseCapability("raed"); !errors.Is(err, ErrUnknownCapability) || !strings.Contains(err.Error(), "discover, read") {
		t.Errorf("got %v, want ErrUnknownCapability listing the valid names", err)
	}
}

func mustManifest(tb testing.TB, c string) (*Manifest, error) {
	tb.Helper()
	return LoadManifest(filepath.Join("testdata", "manifest", c, "connector.yaml"))
}

func TestLoadManifest(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		m, err := mustManifest(t, "ok")
		if err != nil {
			t.Fatal(err)
		}
		if m.Name != "hubspot" || m.Version != "1.2.0" || m.Capabilities != Discover|Read|Remote {
			t.Errorf("got %+v", m)
		}
		if m.Auth.Type != "token" || len(m.Auth.EnvVars) != 1 || m.Auth.EnvVars[0].Name != "HUBSPOT_TOKEN" {
			t.Errorf("auth %+v", m.Auth)
		}
		if m.HealthCheck == nil || m.HealthCheck.Method != "GET" || m.HealthCheck.ExpectStatus != 200 || m.HealthCheck.TimeoutSeconds != 10 {
			t.Errorf("health check defaults not applied: %+v", m.HealthCheck)
		}
	})
	for _, tc := range []struct{ dir, field, says string }{
		{"bad_capability", "capabilities[1]", `unknown capability "raed"`},
		{"missing_version", "field version", "is required"},
		{"bad_type", "config.archived.type", `"bool" is not one of`},
		{"unknown_field", "descripton", "not found"},
	} {
		t.Run("Err_"+tc.dir, func(t *testing.T) {
			_, err := mustManifest(t, tc.dir)
			if !errors.Is(err, ErrInvalidManifest) {
				t.Fatalf("got %v, want ErrInvalidManifest", err)
			}
			for _, want := range []string{filepath.Join("testdata", "manifest", tc.dir, "connector.yaml"), tc.field, tc.says} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

func TestValidateConfig(t *testing.T) {
	m, err := mustManifest(t, "ok")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("OK", func(t *testing.T) {
		cfg, err := m.ValidateConfig(map[string]any{"url": "https://api.example.com", "page_size": 50})
		if err != nil {
			t.Fatal(err)
		}
		if cfg.String("url") != "https://api.example.com" || cfg.Int("page_size") != 50 {
			t.Errorf("got %v", cfg)
		}
		if cfg.Bool("archived") || cfg.String("mode") != "full" {
			t.Errorf("defaults not applied: %v", cfg)
		}
	})
	for _, tc := range []struct {
		name string
		cfg  map[string]any
		says []string
	}{
		{"ErrWrongType", map[string]any{"url": "https://x.io", "page_size": "fifty"}, []string{`"page_size"`, "integer"}},
		{"ErrMissingRequired", map[string]any{}, []string{"url"}},
		{"ErrUnknownKey", map[string]any{"url": "https://x.io", "pagesize": 5}, []string{"pagesize"}},
		{"ErrOutOfRange", map[string]any{"url": "https://x.io", "page_size": 5000}, []string{`"page_size"`, "want 1,000"}},
		{"ErrEnum", map[string]any{"url": "https://x.io", "mode": "cdc"}, []string{`"mode"`}},
		{"ErrFormat", map[string]any{"url": "not a uri"}, []string{`"url"`, "uri"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.ValidateConfig(tc.cfg)
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("got %v, want ErrInvalidConfig", err)
			}
			for _, w := range append(tc.says, "hubspot") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// fake is a connector declaring read without implementing Read.
type fake struct{ caps Capability }

func (f fake) Capabilities() Capability { return f.caps }

type fakeReader struct{ fake }

func (fakeReader) Read(context.Context, string, ReadOptions) iter.Seq2[arrow.RecordBatch, error] {
	return func(func(arrow.RecordBatch, error) bool) {}
}

func TestRegistry(t *testing.T) {
	m, err := mustManifest(t, "ok")
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistry()
	if err := r.Register(Registration{Manifest: m, New: func(Config) (Connector, error) { return fake{caps: Read}, nil }}); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(Registration{Manifest: m, New: func(Config) (Connector, error) { return nil, nil }}); err == nil {
		t.Error("a duplicate name was accepted")
	}
	if _, err := r.Lookup("nope"); !errors.Is(err, ErrUnknownConnector) || !strings.Contains(err.Error(), "hubspot") {
		t.Errorf("got %v, want ErrUnknownConnector listing hubspot", err)
	}
	if _, _, err := r.Open("hubspot", map[string]any{"url": "https://x.io"}); err == nil || !strings.Contains(err.Error(), "no Read method") {
		t.Errorf("a connector declaring read without Read was opened: %v", err)
	}
	if _, _, err := r.Open("hubspot", map[string]any{"url": 5}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("got %v, want ErrInvalidConfig", err)
	}
	r2 := NewRegistry()
	r2.Register(Registration{Manifest: m, New: func(Config) (Connector, error) { return fakeReader{fake{caps: Read | Write}}, nil }})
	if _, _, err := r2.Open("hubspot", map[string]any{"url": "https://x.io"}); err == nil {
		t.Error("a connector with capabilities beyond its manifest was opened")
	}
	r3 := NewRegistry()
	r3.Register(Registration{Manifest: m, New: func(Config) (Connector, error) { return fakeReader{fake{caps: Read}}, nil }})
	if _, _, err := r3.Open("hubspot", map[string]any{"url": "https://x.io"}); err != nil {
		t.Errorf("Open: %v", err)
	}
}

func TestSelectTables(t *testing.T) {
	all := []TableInfo{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	got, err := SelectTables(all, nil)
	if err != nil || len(got) != 3 {
		t.Errorf("empty selection: %v, %v", got, err)
	}
	got, err = SelectTables(all, []string{"c", "a"})
	if err != nil || len(got) != 2 || got[0].Name != "c" {
		t.Errorf("got %v, %v", got, err)
	}
	if _, err := SelectTables(all, []string{"zz"}); !errors.Is(err, ErrUnknownTable) || !strings.Contains(err.Error(), "a, b, c") {
		t.Errorf("got %v, want ErrUnknownTable listing the tables", err)
	}
}
