package extractcheck

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// mustExtract builds an extract by hand from SQL statements.
func mustExtract(tb testing.TB, dir string, stmts ...string) string {
	tb.Helper()
	path := filepath.Join(dir, "extract.duckdb")
	db, err := sql.Open("duckdb", path)
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			tb.Fatalf("%s: %v", s, err)
		}
	}
	db.Exec("CHECKPOINT")
	db.Close()
	return path
}

func mustParquet(tb testing.TB, path string, rows int) {
	tb.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	db, _ := sql.Open("duckdb", "")
	defer db.Close()
	if _, err := db.Exec("COPY (SELECT range AS id FROM range(" + strconv.Itoa(rows) + ")) TO '" + path + "' (FORMAT parquet)"); err != nil {
		tb.Fatal(err)
	}
}

const metaDDL = "CREATE TABLE _meta (table_name VARCHAR NOT NULL, description VARCHAR, rows BIGINT, size_bytes BIGINT, extracted_at TIMESTAMP, query_mode VARCHAR)"

func TestVerifyOK(t *testing.T) {
	dir := t.TempDir()
	pq := filepath.Join(dir, "data", "t.parquet")
	mustParquet(t, pq, 10)
	st, _ := os.Stat(pq)
	path := mustExtract(t, dir, metaDDL,
		"INSERT INTO _meta VALUES ('t', 'd', 10, "+strconv.FormatInt(st.Size(), 10)+", TIMESTAMP '2026-01-01 00:00:00', 'local')",
		"INSERT INTO _meta VALUES ('r', 'd', 0, 0, TIMESTAMP '2026-01-01 00:00:00', 'remote')",
		"CREATE VIEW t AS SELECT * FROM read_parquet('"+pq+"')",
		"CREATE TABLE _remote_attach (alias VARCHAR, extension VARCHAR, url VARCHAR, token_env VARCHAR)",
		"INSERT INTO _remote_attach VALUES ('bq', 'bigquery', 'project=p', '')")
	x, err := Verify(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if x.Counts["t"] != 10 || len(x.Remote) != 1 {
		t.Errorf("%+v", x)
	}
}

// TestVerifyCatches: each broken extract is reported with what is wrong.
func TestVerifyCatches(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stmts func(pq string) []string
		says  string
	}{
		{"SeventhColumn", func(pq string) []string {
			return []string{"CREATE TABLE _meta (table_name VARCHAR NOT NULL, description VARCHAR, rows BIGINT, size_bytes BIGINT, extracted_at TIMESTAMP, query_mode VARCHAR, schema_json VARCHAR)"}
		}, "7 columns"},
		{"WrongType", func(pq string) []string {
			return []string{"CREATE TABLE _meta (table_name VARCHAR NOT NULL, description VARCHAR, rows INTEGER, size_bytes BIGINT, extracted_at TIMESTAMP, query_mode VARCHAR)"}
		}, "want rows BIGINT"},
		{"RelativePath", func(pq string) []string {
			return []string{metaDDL, "INSERT INTO _meta VALUES ('t', '', 10, 1, now()::TIMESTAMP - INTERVAL 1 HOUR, 'local')",
				"CREATE VIEW t AS SELECT * FROM read_parquet('" + pq + "')",
				"CREATE OR REPLACE VIEW t AS SELECT * FROM read_parquet('data/t.parquet')"}
		}, "relative path"},
		{"WrongCount", func(pq string) []string {
			return []string{metaDDL, "INSERT INTO _meta VALUES ('t', '', 11, 1, now()::TIMESTAMP - INTERVAL 1 HOUR, 'local')",
				"CREATE VIEW t AS SELECT * FROM read_parquet('" + pq + "')"}
		}, "_meta says 11"},
		{"MissingView", func(pq string) []string {
			return []string{metaDDL, "INSERT INTO _meta VALUES ('t', '', 10, 1, now()::TIMESTAMP - INTERVAL 1 HOUR, 'local')"}
		}, "has no view"},
		{"RemoteWithRows", func(pq string) []string {
			return []string{metaDDL, "INSERT INTO _meta VALUES ('r', '', 5, 0, now()::TIMESTAMP - INTERVAL 1 HOUR, 'remote')"}
		}, "want 0 and 0"},
		{"BadMode", func(pq string) []string {
			return []string{metaDDL, "INSERT INTO _meta VALUES ('r', '', 0, 0, now()::TIMESTAMP - INTERVAL 1 HOUR, 'cached')"}
		}, `"cached"`},
		{"SecretInRemote", func(pq string) []string {
			return []string{metaDDL, "CREATE TABLE _remote_attach (alias VARCHAR, extension VARCHAR, url VARCHAR, token_env VARCHAR)",
				"INSERT INTO _remote_attach VALUES ('kbc', 'keboola', 'https://x/', 'sk-abc123secret')"}
		}, "not an environment variable name"},
		{"UnknownExtension", func(pq string) []string {
			return []string{metaDDL, "CREATE TABLE _remote_attach (alias VARCHAR, extension VARCHAR, url VARCHAR, token_env VARCHAR)",
				"INSERT INTO _remote_attach VALUES ('pg', 'postgres', 'host=x', '')"}
		}, "not one of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pq := filepath.Join(dir, "data", "t.parquet")
			mustParquet(t, pq, 10)
			t.Chdir(dir) // so a relative path resolves while the view is created
			path := mustExtract(t, dir, tc.stmts(pq)...)
			_, err := Verify(context.Background(), path)
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("got %v, want an error saying %q", err, tc.says)
			}
		})
	}
}

func TestVerifyTempFiles(t *testing.T) {
	dir := t.TempDir()
	path := mustExtract(t, dir, metaDDL)
	os.WriteFile(filepath.Join(dir, "extract.duckdb.tmp-1"), nil, 0o644)
	if _, err := Verify(context.Background(), path); err == nil || !strings.Contains(err.Error(), "temporary files") {
		t.Errorf("got %v", err)
	}
}

// TestVerifyVersions: a view may read a published version under
// data/.versions/<table>/, and data/<table>.parquet must link that version.
func TestVerifyVersions(t *testing.T) {
	dir := t.TempDir()
	run := "0b9f3c1e-5d7a-4e2b-9c61-3f8a2d4e6b10"
	version := filepath.Join(dir, "data", ".versions", "t", run+".parquet")
	mustParquet(t, version, 10)
	st, _ := os.Stat(version)
	link := filepath.Join(dir, "data", "t.parquet")
	if err := os.Link(version, link); err != nil {
		t.Fatal(err)
	}
	path := mustExtract(t, dir, metaDDL,
		"INSERT INTO _meta VALUES ('t', 'd', 10, "+strconv.FormatInt(st.Size(), 10)+", TIMESTAMP '2026-01-01 00:00:00', 'local')",
		"CREATE VIEW t AS SELECT * FROM read_parquet('"+version+"')")
	if _, err := Verify(context.Background(), path); err != nil {
		t.Fatalf("OK: %v", err)
	}
	// The link names another file: consumers scanning data/ would read
	// something else than the extract.
	os.Remove(link)
	mustParquet(t, link, 10)
	if _, err := Verify(context.Background(), path); err == nil || !strings.Contains(err.Error(), "is not a link to the version") {
		t.Errorf("ErrStaleLink: got %v", err)
	}
	if _, err := Verify(context.Background(), path, WhileWriting()); err != nil {
		t.Errorf("while a sync publishes, a link ahead of the extract is allowed: %v", err)
	}
}
