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
	v := &verifier{ctx: ctx, conn: conn, o: o, dataDir: filepath.Join(filepath.Dir(path), "data"),
		x: &Extract{Path: path, Views: map[string]string{}, Counts: map[string]int64{}}}
	if err := v.metaColumns(); err != nil || len(v.errs) > 0 {
		if err != nil {
			return nil, err
		}
		return v.x, errors.Join(v.errs...)
	}
	for _, step := range []func() error{v.readMeta, v.readViews, v.tables, v.remoteAttach} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	v.remoteViews()
	if !o.allowTemp {
		if err := noTempFiles(filepath.Dir(path)); err != nil {
			v.errs = append(v.errs, err)
		}
	}
	return v.x, errors.Join(v.errs...)
}

// verifier is one Verify: the open extract, what was read and every
// violation found.
type verifier struct {
	ctx     context.Context
	conn    *sql.Conn
	o       options
	dataDir string
	x       *Extract
	errs    []error
}

func (v *verifier) bad(format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf(format, args...))
}

// query runs q and calls scan for every row.
func (v *verifier) query(q string, scan func(*sql.Rows) error) error {
	rows, err := v.conn.QueryContext(v.ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// metaColumns checks _meta has exactly the six contract columns, in order,
// with their types.
func (v *verifier) metaColumns() error {
	var cols [][3]string
	err := v.query(`SELECT column_name, data_type, is_nullable FROM information_schema.columns
		WHERE table_schema = 'main' AND table_name = '_meta' ORDER BY ordinal_position`, func(r *sql.Rows) error {
		var c [3]string
		err := r.Scan(&c[0], &c[1], &c[2])
		cols = append(cols, c)
		return err
	})
	if err != nil {
		return fmt.Errorf("read _meta columns: %w", err)
	}
	if len(cols) != len(wantMeta) {
		v.bad("_meta has %d columns %v, the contract has exactly %d", len(cols), cols, len(wantMeta))
		return nil
	}
	for i, w := range wantMeta {
		if cols[i][0] != w.name || cols[i][1] != w.typ || cols[i][2] != w.nullable {
			v.bad("_meta column %d is %s %s (nullable %s), want %s %s (nullable %s)", i+1, cols[i][0], cols[i][1], cols[i][2], w.name, w.typ, w.nullable)
		}
	}
	return nil
}

func (v *verifier) readMeta() error {
	err := v.query(`SELECT table_name, coalesce(description, ''), rows, size_bytes, extracted_at, query_mode FROM _meta ORDER BY table_name`,
		func(r *sql.Rows) error {
			var m MetaRow
			var rowsN, size sql.NullInt64
			var at sql.NullTime
			var mode sql.NullString
			if err := r.Scan(&m.Table, &m.Description, &rowsN, &size, &at, &mode); err != nil {
				return err
			}
			m.Rows, m.SizeBytes, m.ExtractedAt, m.QueryMode = rowsN.Int64, size.Int64, at.Time, mode.String
			if !rowsN.Valid || !size.Valid || !at.Valid || !mode.Valid {
				v.bad("_meta row %s has a NULL rows, size_bytes, extracted_at or query_mode", m.Table)
			}
			v.x.Meta = append(v.x.Meta, m)
			return nil
		})
	if err != nil {
		return fmt.Errorf("read _meta: %w", err)
	}
	return nil
}

func (v *verifier) readViews() error {
	err := v.query(`SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'`, func(r *sql.Rows) error {
		var n, s string
		err := r.Scan(&n, &s)
		v.x.Views[n] = s
		return err
	})
	if err != nil {
		return fmt.Errorf("read views: %w", err)
	}
	return nil
}

// tables checks every _meta row and that every view has one.
func (v *verifier) tables() error {
	seen := map[string]bool{}
	for _, m := range v.x.Meta {
		if !identRE.MatchString(m.Table) {
			v.bad("_meta table_name %q is not a valid identifier", m.Table)
			continue
		}
		if seen[m.Table] {
			v.bad("_meta lists %s twice", m.Table)
		}
		seen[m.Table] = true
		if m.ExtractedAt.After(time.Now().UTC().Add(time.Minute)) {
			v.bad("_meta extracted_at of %s is in the future: %s", m.Table, m.ExtractedAt)
		}
		switch m.QueryMode {
		case "remote":
			if m.Rows != 0 || m.SizeBytes != 0 {
				v.bad("remote table %s has rows=%d size_bytes=%d, want 0 and 0", m.Table, m.Rows, m.SizeBytes)
			}
		case "local", "materialized":
			v.local(m)
		default:
			v.bad("_meta query_mode of %s is %q, want local, remote or materialized", m.Table, m.QueryMode)
		}
	}
	for name := range v.x.Views {
		if !seen[name] {
			v.bad("view %s has no _meta row", name)
		}
	}
	return nil
}

// remoteAttach reads and checks _remote_attach, when present.
func (v *verifier) remoteAttach() error {
	var has int
	if err := v.conn.QueryRowContext(v.ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema='main' AND table_name='_remote_attach'`).Scan(&has); err != nil {
		return err
	}
	if has == 0 {
		return nil
	}
	var cols []string
	err := v.query(`SELECT column_name || ' ' || data_type FROM information_schema.columns WHERE table_schema='main' AND table_name='_remote_attach' ORDER BY ordinal_position`,
		func(r *sql.Rows) error {
			var c string
			err := r.Scan(&c)
			cols = append(cols, c)
			return err
		})
	if err != nil {
		return err
	}
	if want := []string{"alias VARCHAR", "extension VARCHAR", "url VARCHAR", "token_env VARCHAR"}; !slices.Equal(cols, want) {
		v.bad("_remote_attach columns are %v, want %v", cols, want)
		return nil
	}
	return v.query(`SELECT alias, extension, url, coalesce(token_env, '') FROM _remote_attach`, func(rows *sql.Rows) error {
		var r RemoteRow
		if err := rows.Scan(&r.Alias, &r.Extension, &r.URL, &r.TokenEnv); err != nil {
			return err
		}
		v.x.Remote = append(v.x.Remote, r)
		if !identRE.MatchString(r.Alias) || !identRE.MatchString(r.Extension) {
			v.bad("_remote_attach alias %q or extension %q is not a valid identifier", r.Alias, r.Extension)
		}
		if !slices.Contains(AllowedExtensions, r.Extension) {
			v.bad("_remote_attach extension %q is not one of %v", r.Extension, AllowedExtensions)
		}
		if r.TokenEnv != "" && !envRE.MatchString(r.TokenEnv) {
			v.bad("_remote_attach token_env %q is not an environment variable name", r.TokenEnv)
		}
		if strings.HasSuffix(r.URL, "/") {
			v.bad("_remote_attach url %q ends with a slash", r.URL)
		}
		return nil
	})
}

// remoteViews checks that a remote table's view reads from an attached
// catalog.
func (v *verifier) remoteViews() {
	for _, m := range v.x.Meta {
		sqlText, ok := v.x.Views[m.Table]
		if m.QueryMode != "remote" || !ok {
			continue
		}
		found := false
		for _, r := range v.x.Remote {
			if strings.Contains(sqlText, `FROM "`+r.Alias+`".`) || strings.Contains(sqlText, "FROM "+r.Alias+".") {
				found = true
			}
			// The BigQuery extension reads views through its jobs API.
			if r.Extension == "bigquery" && strings.Contains(sqlText, "FROM bigquery_query(") {
				found = true
			}
		}
		if !found {
			v.bad("remote view %s does not read from an attached catalog: %s", m.Table, sqlText)
		}
	}
}

// local checks a table kept in Parquet: its view reads absolute paths of
// its own files in data/, their sizes add up to _meta's and the view counts
// _meta's rows.
func (v *verifier) local(m MetaRow) {
	sqlText, ok := v.x.Views[m.Table]
	if !ok {
		v.bad("local table %s has no view", m.Table)
		return
	}
	pm := pathRE.FindStringSubmatch(sqlText)
	if pm == nil {
		v.bad("view %s does not read_parquet: %s", m.Table, sqlText)
		return
	}
	var size int64
	for _, q := range quotedRE.FindAllStringSubmatch(pm[1], -1) {
		size += v.file(m.Table, strings.ReplaceAll(q[1], "''", "'"))
	}
	batch, partDir := filepath.Join(v.dataDir, m.Table+".parquet"), filepath.Join(v.dataDir, m.Table)
	if _, err := os.Stat(batch); err == nil {
		if _, err := os.Stat(partDir); err == nil {
			v.bad("table %s has both %s and %s/", m.Table, batch, partDir)
		}
	}
	var n int64
	if err := v.conn.QueryRowContext(v.ctx, `SELECT count(*) FROM "`+m.Table+`"`).Scan(&n); err != nil {
		v.bad("query view %s: %v", m.Table, err)
		return
	}
	v.x.Counts[m.Table] = n
	if n != m.Rows {
		v.bad("view %s has %d rows, _meta says %d", m.Table, n, m.Rows)
	}
	if size != m.SizeBytes {
		v.bad("table %s files hold %d bytes, _meta says %d", m.Table, size, m.SizeBytes)
	}
}

// file checks one path a local view reads and returns its size: the
// table's file, one of its versions (linked by the table's file) or a file
// of one of its monthly partitions.
func (v *verifier) file(table, p string) int64 {
	batch := filepath.Join(v.dataDir, table+".parquet")
	partDir := filepath.Join(v.dataDir, table)
	versionDir := filepath.Join(v.dataDir, ".versions", table)
	switch {
	case !filepath.IsAbs(p):
		v.bad("view %s reads relative path %q", table, p)
		return 0
	case p == batch:
	case filepath.Dir(p) == versionDir:
		if !versionRE.MatchString(filepath.Base(p)) {
			v.bad("view %s reads %s, not a <run id>.parquet version of %s/", table, p, versionDir)
		}
	case strings.HasPrefix(p, partDir+string(filepath.Separator)):
		if rel, _ := filepath.Rel(partDir, p); !partFileRE.MatchString(filepath.ToSlash(rel)) {
			v.bad("view %s reads %s, not a month=YYYY-MM/*.parquet file of %s/", table, p, partDir)
		}
	default:
		v.bad("view %s reads %s, outside %s, %s/ and %s/", table, p, batch, partDir, versionDir)
		return 0
	}
	st, err := os.Stat(p)
	if err != nil {
		v.bad("view %s reads %s: %v", table, p, err)
		return 0
	}
	// data/<table>.parquet links the newest version; while a sync
	// publishes, the link may already name the next one.
	if filepath.Dir(p) == versionDir && !v.o.allowTemp {
		if lt, err := os.Stat(batch); err != nil || !os.SameFile(st, lt) {
			v.bad("%s is not a link to the version %s the view reads", batch, p)
		}
	}
	return st.Size()
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
