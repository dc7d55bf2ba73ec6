// Package duck is the finalizer's DuckDB room, the one package of the
// services that links DuckDB: it builds extract.duckdb from table
// descriptions and runs the queries over partition files (counting what a
// partitioned view shows, compacting, writing delete markers). Every name
// and path it puts into SQL is validated or quoted here.
package duck

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/google/uuid"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" database/sql driver
)

// MetaColumns is the exact _meta contract: names and types, in order.
var MetaColumns = []struct{ Name, Type string }{
	{"table_name", "VARCHAR"},
	{"description", "VARCHAR"},
	{"rows", "BIGINT"},
	{"size_bytes", "BIGINT"},
	{"extracted_at", "TIMESTAMP"},
	{"query_mode", "VARCHAR"},
}

// Table is one _meta row plus, for local tables, the Parquet path its view reads.
type Table struct {
	Table       string
	Description string
	Rows        int64
	SizeBytes   int64
	ExtractedAt time.Time
	QueryMode   string
	// Path is the absolute Parquet path (local tables).
	Path string
	// Files and KeyColumn describe a partitioned table: every file its view
	// reads (absolute) and the key whose newest change the view shows.
	Files     []string
	KeyColumn string
	// RemotePath (or RemoteQuery) and Schema describe a remote table for
	// its view.
	RemotePath  []string
	RemoteQuery *schemas.RemoteQuery
	Schema      *arrow.Schema
}

// QuoteIdent quotes a SQL identifier.
func QuoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
func quoteLit(s string) string   { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// Build writes extract.duckdb for dir atomically: it builds the file
// under a temporary name, checkpoints, closes, fsyncs and renames it over the
// live file. The live file is never opened.
func Build(ctx context.Context, dir string, rows []Table, remote []schemas.RemoteAttach) (err error) {
	if err := validate(rows, remote); err != nil {
		return err
	}
	tmp := filepath.Join(dir, schemas.ExtractFile+parquetfile.TempMarker+uuid.NewString()[:8])
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
		os.Remove(tmp + ".wal")
	}()
	db, err := sql.Open("duckdb", tmp)
	if err != nil {
		return fmt.Errorf("build extract: open %s: %w", tmp, err)
	}
	closed := false
	defer func() {
		if !closed {
			db.Close()
		}
	}()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("build extract: %w", err)
	}
	defer conn.Close()
	exec := func(q string, args ...any) error {
		if _, err := conn.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("build extract: %s: %w", firstLine(q), err)
		}
		return nil
	}
	for _, step := range []func() error{
		func() error { return metaAndViews(exec, rows) },
		func() error { return remoteViews(exec, rows, remote) },
		func() error { return functionViews(exec, rows) },
		func() error { return remoteAttach(exec, remote) },
		func() error { return exec("CHECKPOINT") },
	} {
		if err := step(); err != nil {
			return err
		}
	}
	conn.Close()
	closed = true
	if err := db.Close(); err != nil {
		return fmt.Errorf("build extract: close: %w", err)
	}
	if err := syncFile(tmp); err != nil {
		return fmt.Errorf("build extract: %w", err)
	}
	return parquetfile.ReplaceFile(tmp, filepath.Join(dir, schemas.ExtractFile))
}

// validate refuses names and paths that must not reach SQL: table and key
// names that are not identifiers, view paths that are not absolute Parquet
// files, remote aliases and extensions that are not names.
func validate(rows []Table, remote []schemas.RemoteAttach) error {
	for _, r := range rows {
		if err := schemas.ValidateName("table", r.Table); err != nil {
			return err
		}
		if schemas.Stored(r.QueryMode) && r.Files == nil && !filepath.IsAbs(r.Path) {
			return fmt.Errorf("build extract: view path %q of %s is not absolute", r.Path, r.Table)
		}
		for _, p := range r.Files {
			if !filepath.IsAbs(p) || !strings.HasSuffix(p, ".parquet") {
				return fmt.Errorf("build extract: partition file %q of %s is not an absolute .parquet path", p, r.Table)
			}
		}
		if r.Files != nil {
			if err := schemas.ValidateName("key column", r.KeyColumn); err != nil {
				return fmt.Errorf("build extract: table %s: %w", r.Table, err)
			}
		}
	}
	for _, ra := range remote {
		if err := schemas.ValidateName("alias", ra.Alias); err != nil {
			return err
		}
		if err := schemas.ValidateName("extension", ra.Extension); err != nil {
			return err
		}
	}
	return nil
}

// metaAndViews creates _meta with one row per table and the view of every
// table kept in Parquet.
func metaAndViews(exec func(string, ...any) error, rows []Table) error {
	var cols []string
	for i, c := range MetaColumns {
		def := c.Name + " " + c.Type
		if i == 0 {
			def += " NOT NULL"
		}
		cols = append(cols, def)
	}
	if err := exec("CREATE TABLE _meta (" + strings.Join(cols, ", ") + ")"); err != nil {
		return err
	}
	for _, r := range rows {
		rowsN, size := r.Rows, r.SizeBytes
		if r.QueryMode == schemas.ModeRemote {
			rowsN, size = 0, 0
		}
		// extracted_at is UTC without a zone; pass it as text so no session
		// time zone shifts it.
		if err := exec("INSERT INTO _meta VALUES (?, ?, ?, ?, CAST(? AS TIMESTAMP), ?)",
			r.Table, r.Description, rowsN, size, r.ExtractedAt.UTC().Format("2006-01-02 15:04:05.999999"), r.QueryMode); err != nil {
			return err
		}
		switch {
		case r.QueryMode == schemas.ModeLocal && r.Files != nil:
			if err := exec("CREATE VIEW " + QuoteIdent(r.Table) + " AS " + PartitionedView(r.Files, r.KeyColumn)); err != nil {
				return err
			}
		case schemas.Stored(r.QueryMode):
			if err := exec("CREATE VIEW " + QuoteIdent(r.Table) + " AS SELECT * FROM read_parquet(" + quoteLit(r.Path) + ")"); err != nil {
				return err
			}
		}
	}
	return nil
}

// remoteAttach records how the orchestrator attaches the source's catalog.
func remoteAttach(exec func(string, ...any) error, remote []schemas.RemoteAttach) error {
	if len(remote) == 0 {
		return nil
	}
	if err := exec("CREATE TABLE _remote_attach (alias VARCHAR, extension VARCHAR, url VARCHAR, token_env VARCHAR)"); err != nil {
		return err
	}
	for _, ra := range remote {
		if err := exec("INSERT INTO _remote_attach VALUES (?, ?, ?, ?)", ra.Alias, ra.Extension, strings.TrimRight(ra.URL, "/"), ra.TokenEnv); err != nil {
			return err
		}
	}
	return nil
}

// syncFile flushes path to disk.
func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync: %w", err)
	}
	return f.Close()
}

// remoteViews creates a view over <alias>.<path> for every remote table
// with a path. DuckDB binds a view when it is created, so the catalog is
// stood in for by an in-memory database with empty tables of the same names,
// detached afterwards; the view's SQL resolves against the real catalog
// once the orchestrator attaches it.
func remoteViews(exec func(string, ...any) error, rows []Table, remote []schemas.RemoteAttach) error {
	var views []Table
	for _, r := range rows {
		if r.QueryMode == schemas.ModeRemote && len(r.RemotePath) > 0 {
			views = append(views, r)
		}
	}
	if len(views) == 0 {
		return nil
	}
	if len(remote) == 0 {
		return fmt.Errorf("build extract: remote tables but no _remote_attach row")
	}
	alias := remote[0].Alias
	if err := exec("ATTACH ':memory:' AS " + QuoteIdent(alias)); err != nil {
		return err
	}
	schemasMade := map[string]bool{}
	for _, v := range views {
		if len(v.RemotePath) > 2 {
			return fmt.Errorf("build extract: remote path %q of %s has more than schema and table", v.RemotePath, v.Table)
		}
		schemaName, table := "main", v.RemotePath[len(v.RemotePath)-1]
		if len(v.RemotePath) == 2 {
			schemaName = v.RemotePath[0]
		}
		for _, part := range v.RemotePath {
			if part == "" || strings.ContainsAny(part, "\x00\n") {
				return fmt.Errorf("build extract: remote path %q of %s has an empty or unsafe part", v.RemotePath, v.Table)
			}
		}
		ref := QuoteIdent(alias) + "." + QuoteIdent(schemaName) + "." + QuoteIdent(table)
		if !schemasMade[schemaName] {
			schemasMade[schemaName] = true
			if err := exec("CREATE SCHEMA IF NOT EXISTS " + QuoteIdent(alias) + "." + QuoteIdent(schemaName)); err != nil {
				return err
			}
		}
		cols := "_stub INTEGER"
		if v.Schema != nil && v.Schema.NumFields() > 0 {
			var defs []string
			for _, f := range v.Schema.Fields() {
				defs = append(defs, QuoteIdent(f.Name)+" VARCHAR")
			}
			cols = strings.Join(defs, ", ")
		}
		if err := exec("CREATE TABLE IF NOT EXISTS " + ref + " (" + cols + ")"); err != nil {
			return err
		}
		if err := exec("CREATE VIEW " + QuoteIdent(v.Table) + " AS SELECT * FROM " + ref); err != nil {
			return err
		}
	}
	return exec("DETACH " + QuoteIdent(alias))
}

// functionViews creates a view over an extension's table function for
// every remote table with a RemoteQuery. DuckDB binds a view when it is
// created, so the function is stood in for by a temporary table macro of
// the same name returning the table's columns, dropped afterwards: the view
// keeps its SQL and resolves against the extension once the orchestrator
// loads it. Nothing temporary is stored in the file.
func functionViews(exec func(string, ...any) error, rows []Table) error {
	for _, r := range rows {
		q := r.RemoteQuery
		if r.QueryMode != schemas.ModeRemote || q == nil {
			continue
		}
		if err := q.Validate(); err != nil {
			return fmt.Errorf("build extract: table %s: %w", r.Table, err)
		}
		params := make([]string, len(q.Args))
		args := make([]string, len(q.Args))
		for i, a := range q.Args {
			params[i] = fmt.Sprintf("p%d", i)
			args[i] = quoteLit(a)
		}
		cols := "NULL::VARCHAR AS _stub"
		if r.Schema != nil && r.Schema.NumFields() > 0 {
			var defs []string
			for _, f := range r.Schema.Fields() {
				defs = append(defs, "NULL::VARCHAR AS "+QuoteIdent(f.Name))
			}
			cols = strings.Join(defs, ", ")
		}
		if err := exec("CREATE TEMP MACRO " + QuoteIdent(q.Function) + "(" + strings.Join(params, ", ") + ") AS TABLE SELECT " + cols); err != nil {
			return err
		}
		if err := exec("CREATE VIEW " + QuoteIdent(r.Table) + " AS SELECT * FROM " + q.Function + "(" + strings.Join(args, ", ") + ")"); err != nil {
			return err
		}
		if err := exec("DROP MACRO TABLE temp." + QuoteIdent(q.Function)); err != nil {
			return err
		}
	}
	return nil
}

func firstLine(q string) string {
	if i := strings.IndexAny(q, "(\n"); i > 0 {
		return strings.TrimSpace(q[:i])
	}
	return q
}
