// Package duck is the finalizer's DuckDB room, the one package of the
// services that links DuckDB: it builds extract.duckdb from table
// descriptions and runs the queries over partition files (counting what a
// partitioned view shows, compacting, writing delete markers). Every name
// and path it puts into SQL is validated or quoted here.
package duck

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/errclass"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"

	"github.com/duckdb/duckdb-go/v2" // also registers the "duckdb" database/sql driver
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
//
// Each table is published on its own: a table whose view or _meta row
// cannot be made for a reason that repeats on every try (a name, a type, a
// malformed file; see errclass) is left out of the file and returned in
// failed with why, and every other table is published. err is for what
// fails the whole file (opening, writing or swapping it, the remote attach
// row) or an error worth retrying.
func Build(ctx context.Context, dir string, rows []Table, remote []schemas.RemoteAttach) (failed map[string]error, err error) {
	if err := validateRemote(remote); err != nil {
		return nil, errclass.MarkDeterministic(err)
	}
	failed = map[string]error{}
	tmp := parquetfile.TempName(filepath.Join(dir, schemas.ExtractFile))
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
		os.Remove(tmp + ".wal")
	}()
	db, err := sql.Open("duckdb", tmp)
	if err != nil {
		return nil, fmt.Errorf("build extract: open %s: %w", tmp, err)
	}
	closed := false
	defer func() {
		if !closed {
			db.Close()
		}
	}()
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("build extract: %w", classify(err))
	}
	defer conn.Close()
	exec := func(q string, args ...any) error {
		if _, err := conn.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("build extract: %s: %w", firstLine(q), classify(err))
		}
		return nil
	}
	if err := createMeta(exec); err != nil {
		return nil, err
	}
	stubs, err := remoteStubs(exec, rows, remote)
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		err := publishTable(exec, r, stubs)
		if err == nil {
			continue
		}
		if ctx.Err() != nil || !errclass.IsDeterministic(err) {
			return nil, err
		}
		failed[r.Table] = err
	}
	if stubs != "" {
		if err := exec("DETACH " + QuoteIdent(stubs)); err != nil {
			return nil, err
		}
	}
	if err := remoteAttach(exec, remote); err != nil {
		return nil, err
	}
	if err := exec("CHECKPOINT"); err != nil {
		return nil, err
	}
	conn.Close()
	closed = true
	if err := db.Close(); err != nil {
		return nil, fmt.Errorf("build extract: close: %w", classify(err))
	}
	if err := syncFile(tmp); err != nil {
		return nil, fmt.Errorf("build extract: %w", err)
	}
	if err := parquetfile.ReplaceFile(tmp, filepath.Join(dir, schemas.ExtractFile)); err != nil {
		return nil, err
	}
	return failed, nil
}

// classify marks a DuckDB error by its type: interruptions, I/O (a busy or
// locked file; not a missing one), memory, transaction conflicts and the
// network may pass; every other type (catalog, binder, parser, conversion,
// invalid input such as a file that is not Parquet, …) repeats on every
// try.
func classify(err error) error {
	var de *duckdb.Error
	if !errors.As(err, &de) {
		return err
	}
	switch de.Type {
	case duckdb.ErrorTypeIO:
		// A file that is not there stays missing; a lock or a read may pass.
		if strings.Contains(de.Msg, "No files found") || strings.Contains(de.Msg, "does not exist") {
			return errclass.MarkDeterministic(err)
		}
		return errclass.MarkTransient(err)
	case duckdb.ErrorTypeInterrupt, duckdb.ErrorTypeOutOfMemory, duckdb.ErrorTypeTransaction,
		duckdb.ErrorTypeConnection, duckdb.ErrorTypeNetwork, duckdb.ErrorTypeHTTP:
		return errclass.MarkTransient(err)
	}
	return errclass.MarkDeterministic(err)
}

// validateRemote refuses remote aliases and extensions that are not names.
func validateRemote(remote []schemas.RemoteAttach) error {
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

// validateTable refuses what must not reach SQL: a table name or key that
// is not an identifier, view paths that are not absolute Parquet files,
// remote paths and queries that are not plain.
func validateTable(r Table) error {
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
	if r.QueryMode != schemas.ModeRemote {
		return nil
	}
	if q := r.RemoteQuery; q != nil {
		if err := q.Validate(); err != nil {
			return fmt.Errorf("build extract: table %s: %w", r.Table, err)
		}
		return nil
	}
	if len(r.RemotePath) > 2 {
		return fmt.Errorf("build extract: remote path %q of %s has more than schema and table", r.RemotePath, r.Table)
	}
	for _, part := range r.RemotePath {
		if part == "" || strings.ContainsAny(part, "\x00\n") {
			return fmt.Errorf("build extract: remote path %q of %s has an empty or unsafe part", r.RemotePath, r.Table)
		}
	}
	return nil
}

// createMeta creates _meta with the contract's columns.
func createMeta(exec func(string, ...any) error) error {
	var cols []string
	for i, c := range MetaColumns {
		def := c.Name + " " + c.Type
		if i == 0 {
			def += " NOT NULL"
		}
		cols = append(cols, def)
	}
	return exec("CREATE TABLE _meta (" + strings.Join(cols, ", ") + ")")
}

// publishTable creates r's view, then its _meta row; when the row fails the
// view is dropped again, so a table is in the file whole or not at all.
// Nothing is dropped when the view itself fails: the name may be another
// table's.
func publishTable(exec func(string, ...any) error, r Table, stubs string) error {
	if err := validateTable(r); err != nil {
		return errclass.MarkDeterministic(err)
	}
	if err := view(exec, r, stubs); err != nil {
		return err
	}
	rowsN, size := r.Rows, r.SizeBytes
	if r.QueryMode == schemas.ModeRemote {
		rowsN, size = 0, 0
	}
	// extracted_at is UTC without a zone; pass it as text so no session
	// time zone shifts it.
	err := exec("INSERT INTO _meta VALUES (?, ?, ?, ?, CAST(? AS TIMESTAMP), ?)",
		r.Table, r.Description, rowsN, size, r.ExtractedAt.UTC().Format("2006-01-02 15:04:05.999999"), r.QueryMode)
	if err != nil {
		if derr := exec("DROP VIEW IF EXISTS " + QuoteIdent(r.Table)); derr != nil {
			return errors.Join(err, derr)
		}
	}
	return err
}

// view creates the view of one table, by kind: over its Parquet file, its
// partition files, the remote catalog or the extension's table function.
func view(exec func(string, ...any) error, r Table, stubs string) error {
	switch {
	case r.QueryMode == schemas.ModeLocal && r.Files != nil:
		return exec("CREATE VIEW " + QuoteIdent(r.Table) + " AS " + PartitionedView(r.Files, r.KeyColumn))
	case schemas.Stored(r.QueryMode):
		return exec("CREATE VIEW " + QuoteIdent(r.Table) + " AS SELECT * FROM read_parquet(" + quoteLit(r.Path) + ")")
	case r.QueryMode == schemas.ModeRemote && r.RemoteQuery != nil:
		return functionView(exec, r)
	case r.QueryMode == schemas.ModeRemote && len(r.RemotePath) > 0:
		return remoteView(exec, r, stubs)
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

// remoteStubs stands in for the remote catalog while remote views are
// created: DuckDB binds a view when it is created, so the catalog's alias
// is attached as an in-memory database in which each remote view creates
// an empty table of the same name (remoteView), detached once every view
// is made; the views' SQL resolves against the real catalog once the
// orchestrator attaches it. It returns the alias ("" when no table needs
// one).
func remoteStubs(exec func(string, ...any) error, rows []Table, remote []schemas.RemoteAttach) (string, error) {
	need := slices.ContainsFunc(rows, func(r Table) bool {
		return r.QueryMode == schemas.ModeRemote && r.RemoteQuery == nil && len(r.RemotePath) > 0
	})
	if !need {
		return "", nil
	}
	if len(remote) == 0 {
		return "", errclass.MarkDeterministic(fmt.Errorf("build extract: remote tables but no _remote_attach row"))
	}
	alias := remote[0].Alias
	return alias, exec("ATTACH ':memory:' AS " + QuoteIdent(alias))
}

// remoteView creates a view over <alias>.<path> against the stand-in.
func remoteView(exec func(string, ...any) error, v Table, alias string) error {
	schemaName, table := "main", v.RemotePath[len(v.RemotePath)-1]
	if len(v.RemotePath) == 2 {
		schemaName = v.RemotePath[0]
	}
	ref := QuoteIdent(alias) + "." + QuoteIdent(schemaName) + "." + QuoteIdent(table)
	if err := exec("CREATE SCHEMA IF NOT EXISTS " + QuoteIdent(alias) + "." + QuoteIdent(schemaName)); err != nil {
		return err
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
	return exec("CREATE VIEW " + QuoteIdent(v.Table) + " AS SELECT * FROM " + ref)
}

// functionView creates a view over an extension's table function. DuckDB
// binds a view when it is created, so the function is stood in for by a
// temporary table macro of the same name returning the table's columns,
// dropped afterwards: the view keeps its SQL and resolves against the
// extension once the orchestrator loads it. Nothing temporary is stored in
// the file.
func functionView(exec func(string, ...any) error, r Table) error {
	q := r.RemoteQuery
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
	err := exec("CREATE VIEW " + QuoteIdent(r.Table) + " AS SELECT * FROM " + q.Function + "(" + strings.Join(args, ", ") + ")")
	if derr := exec("DROP MACRO TABLE temp." + QuoteIdent(q.Function)); derr != nil {
		return errors.Join(err, derr)
	}
	return err
}

func firstLine(q string) string {
	if i := strings.IndexAny(q, "(\n"); i > 0 {
		return strings.TrimSpace(q[:i])
	}
	return q
}
