// Package extractcheck verifies a published extract against the on-disk
// contract the Agnes orchestrator relies on: the exact _meta columns, one
// view per local table over absolute Parquet paths with matching counts,
// _remote_attach rows, valid identifiers and no temporary files. Tests and
// contract checks use it; it links DuckDB.
package extractcheck

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" driver
)

// MetaRow is one _meta row.
type MetaRow struct {
	Table       string
	Description string
	Rows        int64
	SizeBytes   int64
	ExtractedAt time.Time
	QueryMode   string
}

// RemoteRow is one _remote_attach row.
type RemoteRow struct{ Alias, Extension, URL, TokenEnv string }

// Extract is what Verify read from an extract.
type Extract struct {
	Path   string
	Meta   []MetaRow
	Views  map[string]string // view name -> SQL
	Counts map[string]int64  // view name -> count(*) for local views
	Remote []RemoteRow
}

var (
	identRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]{0,63}$`)
	envRE   = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
	pathRE  = regexp.MustCompile(`read_parquet\((?:main\.list_value\(|\[)?('[^)\]]*)`)
	// partFileRE is a partitioned table's file below data/<table>/.
	partFileRE = regexp.MustCompile(`^month=[0-9]{4}-(0[1-9]|1[0-2])/[^/]+\.parquet$`)
	// versionRE is a batch table's published version below data/.versions/<table>/.
	versionRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.parquet$`)
	quotedRE  = regexp.MustCompile(`'((?:[^']|'')*)'`)

	// AllowedExtensions are the extensions the consumer attaches.
	AllowedExtensions = []string{"keboola", "bigquery", "uc_catalog", "delta", "snowflake"}

	wantMeta = []struct{ name, typ, nullable string }{
		{"table_name", "VARCHAR", "NO"},
		{"description", "VARCHAR", "YES"},
		{"rows", "BIGINT", "YES"},
		{"size_bytes", "BIGINT", "YES"},
		{"extracted_at", "TIMESTAMP", "YES"},
		{"query_mode", "VARCHAR", "YES"},
	}
)

// Option tunes Verify.
type Option func(*options)

type options struct{ allowTemp bool }

// WhileWriting skips the check for temporary files, which exist while a
// sync is publishing; readers that run during syncs use it.
func WhileWriting() Option { return func(o *options) { o.allowTemp = true } }

// Verify opens the extract at path read-only and checks every contract point.
// It returns what it read and an error joining every violation found.
func Verify(ctx context.Context, path string, opts ...Option) (*Extract, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("verify extract: path %q is not absolute", path)
	}
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		return nil, fmt.Errorf("open extract %s read-only: %w", path, err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("open extract %s read-only: %w", path, err)
	}
	defer conn.Close()
	x := &Extract{Path: path, Views: map[string]string{}, Counts: map[string]int64{}}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	// _meta: exactly six columns in order, with the contract types.
	rows, err := conn.QueryContext(ctx, `SELECT column_name, data_type, is_nullable FROM information_schema.columns
		WHERE table_schema = 'main' AND table_name = '_meta' ORDER BY ordinal_position`)
	if err != nil {
		return nil, fmt.Errorf("read _meta columns: %w", err)
	}
	var cols [][3]string
	for rows.Next() {
		var c [3]string
		if err := rows.Scan(&c[0], &c[1], &c[2]); err != nil {
			rows.Close()
			return nil, err
		}
		cols = append(cols, c)
	}
	rows.Close()
	if len(cols) != len(wantMeta) {
		bad("_meta has %d columns %v, the contract has exactly %d", len(cols), cols, len(wantMeta))
	} else {
		for i, w := range wantMeta {
			if cols[i][0] != w.name || cols[i][1] != w.typ || cols[i][2] != w.nullable {
				bad("_meta column %d is %s %s (nullable %s), want %s %s (nullable %s)", i+1, cols[i][0], cols[i][1], cols[i][2], w.name, w.typ, w.nullable)
			}
		}
	}
	if len(errs) > 0 {
		return x, errors.Join(errs...)
	}
	mrows, err := conn.QueryContext(ctx, `SELECT table_name, coalesce(description, ''), rows, size_bytes, extracted_at, query_mode FROM _meta ORDER BY table_name`)
	if err != nil {
		return nil, fmt.Errorf("read _meta: %w", err)
	}
	for mrows.Next() {
		var m MetaRow
		var rowsN, size sql.NullInt64
		var at sql.NullTime
		var mode sql.NullString
		if err := mrows.Scan(&m.Table, &m.Description, &rowsN, &size, &at, &mode); err != nil {
			mrows.Close()
			return nil, err
		}
		m.Rows, m.SizeBytes, m.ExtractedAt, m.QueryMode = rowsN.Int64, size.Int64, at.Time, mode.String
		if !rowsN.Valid || !size.Valid || !at.Valid || !mode.Valid {
			bad("_meta row %s has a NULL rows, size_bytes, extracted_at or query_mode", m.Table)
		}
		x.Meta = append(x.Meta, m)
	}
	mrows.Close()

	vrows, err := conn.QueryContext(ctx, `SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'`)
	if err != nil {
		return nil, fmt.Errorf("read views: %w", err)
	}
	for vrows.Next() {
		var n, s string
		if err := vrows.Scan(&n, &s); err != nil {
			vrows.Close()
			return nil, err
		}
		x.Views[n] = s
	}
	vrows.Close()

	dataDir := filepath.Join(filepath.Dir(path), "data")
	seen := map[string]bool{}
	for _, m := range x.Meta {
		if !identRE.MatchString(m.Table) {
			bad("_meta table_name %q is not a valid identifier", m.Table)
			continue
		}
		if seen[m.Table] {
			bad("_meta lists %s twice", m.Table)
		}
		seen[m.Table] = true
		if m.ExtractedAt.After(time.Now().UTC().Add(time.Minute)) {
			bad("_meta extracted_at of %s is in the future: %s", m.Table, m.ExtractedAt)
		}
		switch m.QueryMode {
		case "remote":
			if m.Rows != 0 || m.SizeBytes != 0 {
				bad("remote table %s has rows=%d size_bytes=%d, want 0 and 0", m.Table, m.Rows, m.SizeBytes)
			}
		case "local", "materialized":
			verifyLocal(ctx, conn, x, m, dataDir, o, bad)
		default:
			bad("_meta query_mode of %s is %q, want local, remote or materialized", m.Table, m.QueryMode)
		}
	}
	for v := range x.Views {
		if !seen[v] {
			bad("view %s has no _meta row", v)
		}
	}

	// _remote_attach, when present.
	var hasRemote int
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema='main' AND table_name='_remote_attach'`).Scan(&hasRemote); err != nil {
		return nil, err
	}
	if hasRemote > 0 {
		var rcols []string
		cr, err := conn.QueryContext(ctx, `SELECT column_name || ' ' || data_type FROM information_schema.columns WHERE table_schema='main' AND table_name='_remote_attach' ORDER BY ordinal_position`)
		if err != nil {
			return nil, err
		}
		for cr.Next() {
			var c string
			cr.Scan(&c)
			rcols = append(rcols, c)
		}
		cr.Close()
		if want := []string{"alias VARCHAR", "extension VARCHAR", "url VARCHAR", "token_env VARCHAR"}; !slices.Equal(rcols, want) {
			bad("_remote_attach columns are %v, want %v", rcols, want)
		} else {
			rr, err := conn.QueryContext(ctx, `SELECT alias, extension, url, coalesce(token_env, '') FROM _remote_attach`)
			if err != nil {
				return nil, err
			}
			for rr.Next() {
				var r RemoteRow
				if err := rr.Scan(&r.Alias, &r.Extension, &r.URL, &r.TokenEnv); err != nil {
					rr.Close()
					return nil, err
				}
				x.Remote = append(x.Remote, r)
				if !identRE.MatchString(r.Alias) || !identRE.MatchString(r.Extension) {
					bad("_remote_attach alias %q or extension %q is not a valid identifier", r.Alias, r.Extension)
				}
				if !slices.Contains(AllowedExtensions, r.Extension) {
					bad("_remote_attach extension %q is not one of %v", r.Extension, AllowedExtensions)
				}
				if r.TokenEnv != "" && !envRE.MatchString(r.TokenEnv) {
					bad("_remote_attach token_env %q is not an environment variable name", r.TokenEnv)
				}
				if strings.HasSuffix(r.URL, "/") {
					bad("_remote_attach url %q ends with a slash", r.URL)
				}
			}
			rr.Close()
		}
	}
	// A remote table's view must read from an attached catalog.
	for _, m := range x.Meta {
		v, ok := x.Views[m.Table]
		if m.QueryMode != "remote" || !ok {
			continue
		}
		found := false
		for _, r := range x.Remote {
			if strings.Contains(v, `FROM "`+r.Alias+`".`) || strings.Contains(v, "FROM "+r.Alias+".") {
				found = true
			}
			// The BigQuery extension reads views through its jobs API.
			if r.Extension == "bigquery" && strings.Contains(v, "FROM bigquery_query(") {
				found = true
			}
		}
		if !found {
			bad("remote view %s does not read from an attached catalog: %s", m.Table, v)
		}
	}
	if !o.allowTemp {
		if err := noTempFiles(filepath.Dir(path)); err != nil {
			errs = append(errs, err)
		}
	}
	return x, errors.Join(errs...)
}

func verifyLocal(ctx context.Context, conn *sql.Conn, x *Extract, m MetaRow, dataDir string, o options, bad func(string, ...any)) {
	sqlText, ok := x.Views[m.Table]
	if !ok {
		bad("local table %s has no view", m.Table)
		return
	}
	pm := pathRE.FindStringSubmatch(sqlText)
	if pm == nil {
		bad("view %s does not read_parquet: %s", m.Table, sqlText)
		return
	}
	var paths []string
	for _, q := range quotedRE.FindAllStringSubmatch(pm[1], -1) {
		paths = append(paths, strings.ReplaceAll(q[1], "''", "'"))
	}
	batch := filepath.Join(dataDir, m.Table+".parquet")
	partDir := filepath.Join(dataDir, m.Table)
	versionDir := filepath.Join(dataDir, ".versions", m.Table)
	var size int64
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			bad("view %s reads relative path %q", m.Table, p)
			continue
		}
		switch {
		case p == batch:
			st, err := os.Stat(p)
			if err != nil {
				bad("view %s reads %s: %v", m.Table, p, err)
				continue
			}
			size += st.Size()
		case filepath.Dir(p) == versionDir:
			if !versionRE.MatchString(filepath.Base(p)) {
				bad("view %s reads %s, not a <run id>.parquet version of %s/", m.Table, p, versionDir)
			}
			st, err := os.Stat(p)
			if err != nil {
				bad("view %s reads %s: %v", m.Table, p, err)
				continue
			}
			size += st.Size()
			// data/<table>.parquet links the newest version; while a sync
			// publishes, the link may already name the next one.
			if !o.allowTemp {
				if lt, err := os.Stat(batch); err != nil || !os.SameFile(st, lt) {
					bad("%s is not a link to the version %s the view reads", batch, p)
				}
			}
		case strings.HasPrefix(p, partDir+string(filepath.Separator)):
			if rel, _ := filepath.Rel(partDir, p); !partFileRE.MatchString(filepath.ToSlash(rel)) {
				bad("view %s reads %s, not a month=YYYY-MM/*.parquet file of %s/", m.Table, p, partDir)
			}
			st, err := os.Stat(p)
			if err != nil {
				bad("view %s reads %s: %v", m.Table, p, err)
				continue
			}
			size += st.Size()
		default:
			bad("view %s reads %s, outside %s, %s/ and %s/", m.Table, p, batch, partDir, versionDir)
		}
	}
	if _, err := os.Stat(batch); err == nil {
		if _, err := os.Stat(partDir); err == nil {
			bad("table %s has both %s and %s/", m.Table, batch, partDir)
		}
	}
	var n int64
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM "`+m.Table+`"`).Scan(&n); err != nil {
		bad("query view %s: %v", m.Table, err)
		return
	}
	x.Counts[m.Table] = n
	if n != m.Rows {
		bad("view %s has %d rows, _meta says %d", m.Table, n, m.Rows)
	}
	if size != m.SizeBytes {
		bad("table %s files hold %d bytes, _meta says %d", m.Table, size, m.SizeBytes)
	}
}

// noTempFiles reports temporary or WAL files left in a source folder
// (outside the hidden staging and state folders).
func noTempFiles(dir string) error {
	var found []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && p != dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.Contains(d.Name(), ".tmp-") || strings.HasSuffix(d.Name(), ".wal")) {
			found = append(found, p)
		}
		return nil
	})
	if len(found) > 0 {
		return fmt.Errorf("temporary files left behind: %v", found)
	}
	return nil
}
