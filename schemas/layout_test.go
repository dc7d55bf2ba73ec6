package schemas

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

const testRun = "0b9f3c1e-5d7a-4e2b-9c61-3f8a2d4e6b10"

func TestValidateRunID(t *testing.T) {
	for _, ok := range []string{testRun, StreamRun} {
		if err := ValidateRunID(ok); err != nil {
			t.Errorf("ValidateRunID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../../../../../victim", "run1", strings.ToUpper(testRun),
		"{" + testRun + "}", "urn:uuid:" + testRun, testRun + "/x", testRun[:35]} {
		if err := ValidateRunID(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateRunID(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestPartName(t *testing.T) {
	for _, p := range []PartName{
		{Attempt: 1, First: 0, Last: 9, Hash: "0123456789ab"},
		{Month: "2024-01", Attempt: 3, First: 12, Last: 12, Hash: "ffffffffffff"},
	} {
		got, err := ParsePartName(p.String())
		if err != nil || got != p {
			t.Errorf("ParsePartName(%q) = %+v, %v; want %+v", p.String(), got, err, p)
		}
	}
	for _, bad := range []string{"", "x.part", "../a1-s0000000000-0000000001-0123456789ab.part",
		"a1-s0000000000-0000000001-0123456789ab.part/..", "a0-s0000000000-0000000001-0123456789ab.part",
		"a1-s0000000005-0000000001-0123456789ab.part", "m2024-13-a1-s0000000000-0000000001-0123456789ab.part",
		"a1-s0000000000-0000000001-0123456789AB.part", "a1-s0000000000-0000000001-0123456789ab.parquet"} {
		if _, err := ParsePartName(bad); err == nil {
			t.Errorf("ParsePartName(%q) accepted", bad)
		}
	}
}

func TestLayout(t *testing.T) {
	l := LayoutAt("/data")
	t.Run("OK", func(t *testing.T) {
		pn := PartName{Attempt: 1, First: 0, Last: 1, Hash: "0123456789ab"}
		got, err := l.Part("demo", testRun, "orders", pn)
		want := "/data/extracts/demo/.staging/" + testRun + "/orders/" + pn.String()
		if err != nil || got != want {
			t.Errorf("Part = %q, %v; want %q", got, err, want)
		}
		if got, _ := l.Version("demo", "orders", testRun); got != "/data/extracts/demo/data/.versions/orders/"+testRun+".parquet" {
			t.Errorf("Version = %q", got)
		}
		if got, _ := l.TableLink("demo", "orders"); got != "/data/extracts/demo/data/orders.parquet" {
			t.Errorf("TableLink = %q", got)
		}
	})
	t.Run("ErrEscape", func(t *testing.T) {
		calls := map[string]func() (string, error){
			"source ..":      func() (string, error) { return l.Source("..") },
			"run ..":         func() (string, error) { return l.RunStaging("demo", "..") },
			"run traversal":  func() (string, error) { return l.RunStaging("demo", "../../../../../victim") },
			"table ..":       func() (string, error) { return l.TableStaging("demo", testRun, "..") },
			"table slash":    func() (string, error) { return l.TableLink("demo", "a/b") },
			"version stream": func() (string, error) { return l.Version("demo", "orders", StreamRun) },
			"data ..":        func() (string, error) { return l.InData("demo", "../extract.duckdb") },
			"data abs":       func() (string, error) { return l.InData("demo", "/etc/passwd") },
		}
		for name, call := range calls {
			if p, err := call(); err == nil {
				t.Errorf("%s: got %q, want an error", name, p)
			}
		}
	})
}

// TestDecodeEventRefusesForgeries: events that once deleted or wrote files
// outside a run's folder are refused before anything acts on them.
func TestDecodeEventRefusesForgeries(t *testing.T) {
	for name, body := range map[string]string{
		"RunDots":         `{"type":"run_rejected","run_id":"..","source":"demo"}`,
		"RunTraversal":    `{"type":"run_failed","run_id":"../../../../../victim","source":"demo"}`,
		"RunEmpty":        `{"type":"run_failed","run_id":"","source":"demo"}`,
		"SourceTraversal": `{"type":"run_failed","run_id":"` + testRun + `","source":"../x"}`,
		"UnknownType":     `{"type":"rm_rf","run_id":"` + testRun + `","source":"demo"}`,
		"PartTraversal": `{"type":"batch_written","run_id":"` + testRun + `","source":"demo","table":"t","attempt":1,
			"part":"../../../x.part","seqs":[0],"seq_rows":[1],"rows":1}`,
		"MonthTraversal": `{"type":"batch_written","run_id":"stream","source":"demo","table":"t","attempt":1,"month":"../..",
			"part":"a1-s0000000000-0000000000-0123456789ab.part","seqs":[0],"seq_rows":[1],"rows":1}`,
		"SeqsLie": `{"type":"batch_written","run_id":"` + testRun + `","source":"demo","table":"t","attempt":1,
			"part":"a1-s0000000000-0000000000-0123456789ab.part","seqs":[0],"seq_rows":[1],"rows":5}`,
		"StreamPartTraversal": `{"type":"stream_published","run_id":"stream","source":"demo","parts":["t/../../x"]}`,
		"NegativeAttempt":     `{"type":"table_done","run_id":"` + testRun + `","source":"demo","table":"t","attempt":-1}`,
		"NotJSON":             `{"type":`,
	} {
		t.Run("Err"+name, func(t *testing.T) {
			if ev, err := DecodeEvent([]byte(body)); !errors.Is(err, ErrBadEvent) {
				t.Errorf("DecodeEvent accepted %+v (err %v)", ev, err)
			}
		})
	}
	t.Run("OK", func(t *testing.T) {
		ev := Event{Type: EventBatchWritten, RunID: testRun, Source: "demo", Table: "t", Attempt: 1,
			Part: PartName{Attempt: 1, First: 0, Last: 1, Hash: "0123456789ab"}.String(), Seqs: []int64{0, 1}, SeqRows: []int64{2, 3}, Rows: 5}
		b, _ := ev.Encode()
		got, err := DecodeEvent(b)
		if err != nil || got.Part != ev.Part {
			t.Fatalf("DecodeEvent = %+v, %v", got, err)
		}
		if err := CheckEventSubject(EventSubject("demo", testRun, EventBatchWritten), got); err != nil {
			t.Error(err)
		}
		if err := CheckEventSubject(EventSubject("other", testRun, EventBatchWritten), got); !errors.Is(err, ErrBadEvent) {
			t.Errorf("an event on another source's subject: %v", err)
		}
	})
}

// inside fails tb when p is not below root.
func inside(tb testing.TB, root, p string) {
	tb.Helper()
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		tb.Fatalf("path %q is outside %q", p, root)
	}
}

// eventPaths builds every path the finalizer builds from an event's fields
// and checks each is inside the data dir.
func eventPaths(tb testing.TB, l Layout, ev Event) {
	tb.Helper()
	if p, err := l.RunStaging(ev.Source, ev.RunID); err == nil {
		inside(tb, l.Extracts(), p)
	} else {
		tb.Fatalf("a decoded event's run staging is refused: %v", err)
	}
	if ev.Table != "" {
		if p, err := l.TableStaging(ev.Source, ev.RunID, ev.Table); err == nil {
			inside(tb, l.Extracts(), p)
		} else {
			tb.Fatalf("a decoded event's table staging is refused: %v", err)
		}
		if pn, err := ParsePartName(ev.Part); err == nil {
			p, err := l.Part(ev.Source, ev.RunID, ev.Table, pn)
			if err != nil {
				tb.Fatal(err)
			}
			inside(tb, l.Extracts(), p)
		}
		if p, err := l.Version(ev.Source, ev.Table, ev.RunID); err == nil {
			inside(tb, l.Extracts(), p)
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add([]byte(`{"type":"run_rejected","run_id":"..","source":"demo"}`))
	f.Add([]byte(`{"type":"run_failed","run_id":"` + testRun + `","source":"demo"}`))
	f.Add([]byte(`{"type":"batch_written","run_id":"stream","source":"demo","table":"t","attempt":1,"month":"2024-01",
		"part":"m2024-01-a1-s0000000000-0000000000-0123456789ab.part","seqs":[0],"seq_rows":[1],"rows":1}`))
	f.Add([]byte(`{"type":"stream_published","run_id":"stream","source":"demo","parts":["t/a1-s0000000000-0000000000-0123456789ab.part"]}`))
	l := LayoutAt("/srv/agnes/data")
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeEvent(b)
		if err != nil {
			if !errors.Is(err, ErrBadEvent) {
				t.Fatalf("error %v is not ErrBadEvent", err)
			}
			return
		}
		eventPaths(t, l, ev)
		for _, p := range ev.Parts {
			table, name, _ := strings.Cut(p, "/")
			pn, err := ParsePartName(name)
			if err != nil {
				t.Fatalf("decoded stream part %q does not parse: %v", p, err)
			}
			path, err := l.Part(ev.Source, ev.RunID, table, pn)
			if err != nil {
				t.Fatal(err)
			}
			inside(t, l.Extracts(), path)
		}
	})
}

func FuzzParseDataHeader(f *testing.F) {
	f.Add(testRun, "demo", "orders", "0", "10", "1", "fp")
	f.Add("../../../../../x", "demo", "orders", "0", "10", "1", "fp")
	f.Add(StreamRun, "..", "orders", "-1", "10", "0", "")
	l := LayoutAt("/srv/agnes/data")
	f.Fuzz(func(t *testing.T, run, source, table, seq, rows, attempt, schema string) {
		h := nats.Header{}
		h.Set(HeaderRun, run)
		h.Set(HeaderSource, source)
		h.Set(HeaderTable, table)
		h.Set(HeaderSeq, seq)
		h.Set(HeaderRows, rows)
		h.Set(HeaderAttempt, attempt)
		h.Set(HeaderSchema, schema)
		ref, err := ParseDataHeader(h)
		if err != nil {
			if !errors.Is(err, ErrBadBatch) {
				t.Fatalf("error %v is not ErrBadBatch", err)
			}
			return
		}
		p, err := l.Part(ref.Source, ref.Run, ref.Table, PartName{Attempt: ref.Attempt, First: ref.Seq, Last: ref.Seq, Hash: "0123456789ab"})
		if err != nil {
			t.Fatalf("a parsed header's part path is refused: %v", err)
		}
		inside(t, l.Extracts(), p)
	})
}

func FuzzDecodeSyncRequest(f *testing.F) {
	f.Add([]byte(`{"run_id":"` + testRun + `","source":"demo","tables":["orders"]}`))
	f.Add([]byte(`{"run_id":"..","source":"demo"}`))
	f.Add([]byte(`{"run_id":"` + testRun + `","source":"demo","tables":["../x"]}`))
	l := LayoutAt("/srv/agnes/data")
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeSyncRequest(b)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v is not ErrBadRequest", err)
			}
			return
		}
		p, err := l.RunStaging(req.Source, req.RunID)
		if err != nil {
			t.Fatalf("a decoded request's staging is refused: %v", err)
		}
		inside(t, l.Extracts(), p)
		for _, table := range req.Tables {
			p, err := l.Version(req.Source, table, req.RunID)
			if err != nil {
				t.Fatal(err)
			}
			inside(t, l.Extracts(), p)
		}
		if _, err := json.Marshal(req); err != nil {
			t.Fatal(err)
		}
	})
}

func TestPartitionRel(t *testing.T) {
	got, err := PartitionRel("issues", "2026-05", "s-m2026-05-a1-s0000000001-0000000002-abcabcabcabc.parquet")
	if err != nil || got != filepath.Join("issues", "month=2026-05", "s-m2026-05-a1-s0000000001-0000000002-abcabcabcabc.parquet") {
		t.Errorf("PartitionRel = %q, %v", got, err)
	}
	for _, c := range [][3]string{
		{"../x", "2026-05", "s-a.parquet"},
		{"issues", "2026-13", "s-a.parquet"},
		{"issues", "2026-05", "../../x.parquet"},
		{"issues", "2026-05", "s-a.csv"},
		{"issues", "2026-05", ".parquet"},
	} {
		if _, err := PartitionRel(c[0], c[1], c[2]); err == nil {
			t.Errorf("PartitionRel%v accepted", c)
		}
	}
}

// TestLayoutRefusesLinksOut: a symbolic link inside the data dir that leads
// out of it (a source folder, the staging folder, a version folder) makes
// every path through it an error naming the link's place; relative links
// that stay inside, a data dir that is itself a link, and paths not created yet are
// fine.
func TestLayoutRefusesLinksOut(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(real, "extracts", "shop", StagingFolder), filepath.Join(real, "extracts", "ok", DataFolder), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The data dir is reached through a link: allowed.
	dataDir := filepath.Join(base, "datadir")
	link := func(target, at string) {
		t.Helper()
		if err := os.Symlink(target, at); err != nil {
			t.Fatal(err)
		}
	}
	link(real, dataDir)
	link(outside, filepath.Join(real, "extracts", "demo"))
	link(outside, filepath.Join(real, "extracts", "shop", StagingFolder, testRun))
	link(DataFolder, filepath.Join(real, "extracts", "ok", "inside"))
	l, err := NewLayout(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	pn := PartName{Attempt: 1, First: 0, Last: 1, Hash: "0123456789ab"}
	for name, get := range map[string]func() (string, error){
		"extract of a linked source":   func() (string, error) { return l.Extract("demo") },
		"part of a linked source":      func() (string, error) { return l.Part("demo", testRun, "orders", pn) },
		"version of a linked source":   func() (string, error) { return l.Version("demo", "orders", testRun) },
		"data path of a linked source": func() (string, error) { return l.InData("demo", "orders/month=2024-01/x.parquet") },
		"part of a linked run staging": func() (string, error) { return l.Part("shop", testRun, "orders", pn) },
		"linked run staging":           func() (string, error) { return l.RunStaging("shop", testRun) },
	} {
		p, err := get()
		if !errors.Is(err, ErrOutsideDataDir) || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("%s: %q, %v; want ErrOutsideDataDir naming the link", name, p, err)
		}
	}
	for name, get := range map[string]func() (string, error){
		"a source folder not made yet": func() (string, error) { return l.Extract("fresh") },
		"a real staging folder":        func() (string, error) { return l.Staging("shop") },
		"a link that stays inside":     func() (string, error) { return l.under("ok", "inside", "x.parquet") },
	} {
		if p, err := get(); err != nil {
			t.Errorf("%s: %q refused: %v", name, p, err)
		}
	}
}
