package finalizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/agnes-ai/connector-kit/internal/errclass"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
)

// catalogFile is the finalizer's sidecar per source: what the live extract
// holds, so a later run can keep tables it does not touch. It lives outside
// extract.duckdb because _meta's six columns are a fixed contract.
const catalogFile = ".agnes/catalog.json"

type catalog struct {
	Tables map[string]catalogTable `json:"tables"`
	Remote []schemas.RemoteAttach  `json:"remote,omitempty"`
	// Retired are files no published extract references any more, kept
	// for a grace period for readers of an older extract, then deleted.
	Retired []retiredFile `json:"retired,omitempty"`

	// loaded is every table's entry as loaded: what the live extract
	// shows, for a table the new extract cannot hold to go back to.
	loaded map[string]catalogTable
}

// partFile is one Parquet file of a partitioned table.
type partFile struct {
	// Path is relative to the source's data folder:
	// <table>/month=YYYY-MM/<name>.parquet.
	Path  string `json:"path"`
	Month string `json:"month"`
	Rows  int64  `json:"rows"`
	Size  int64  `json:"size"`
}

type retiredFile struct {
	Path string    `json:"path"` // relative to the data folder
	At   time.Time `json:"at"`
}

type catalogTable struct {
	Description string    `json:"description"`
	Rows        int64     `json:"rows"`
	SizeBytes   int64     `json:"size_bytes"`
	ExtractedAt time.Time `json:"extracted_at"`
	QueryMode   string    `json:"query_mode"`
	RunID       string    `json:"run_id"`
	Schema      []byte    `json:"schema,omitempty"`
	RemotePath  []string  `json:"remote_path,omitempty"`
	// RemoteQuery is a remote view over an extension's table function.
	RemoteQuery *schemas.RemoteQuery `json:"remote_query,omitempty"`
	// Version is the file of a batch table the extract reads, relative to
	// the data folder (.versions/<table>/<run>.parquet). Empty in catalogs
	// written before versions existed: the view then reads <table>.parquet.
	Version string `json:"version,omitempty"`

	// Partitioned tables: the files the view reads, the key-group column,
	// and the visible rows per month (newest version per key, no deletes).
	Partitioned bool             `json:"partitioned,omitempty"`
	KeyColumn   string           `json:"key_column,omitempty"`
	Files       []partFile       `json:"files,omitempty"`
	MonthRows   map[string]int64 `json:"month_rows,omitempty"`
}

// file is the absolute path of the file a batch table's view reads. The
// catalog is a file on disk, so its relative path is checked not to leave
// the data folder.
func (ct catalogTable) file(dataDir, table string) (string, error) {
	rel := ct.Version
	if rel == "" {
		rel = table + ".parquet"
	}
	return inDir(dataDir, rel)
}

// inDir joins rel below dir and refuses a result outside it.
func inDir(dir, rel string) (string, error) {
	p := filepath.Join(dir, rel)
	if filepath.IsAbs(rel) || !strings.HasPrefix(p, dir+string(filepath.Separator)) {
		return "", fmt.Errorf("catalog path %q leaves %s", rel, dir)
	}
	return p, nil
}

func loadCatalog(dir string) (*catalog, error) {
	c := &catalog{Tables: map[string]catalogTable{}}
	b, err := os.ReadFile(filepath.Join(dir, catalogFile))
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load catalog: %w", err)
	}
	if err := json.Unmarshal(b, c); err != nil {
		// A damaged catalog does not mend itself: every try fails alike.
		return nil, errclass.MarkDeterministic(fmt.Errorf("load catalog %s: %w; restore it from a backup or remove the source's folder to publish it afresh",
			filepath.Join(dir, catalogFile), err))
	}
	if c.Tables == nil {
		c.Tables = map[string]catalogTable{}
	}
	c.loaded = make(map[string]catalogTable, len(c.Tables))
	for n, ct := range c.Tables {
		c.loaded[n] = ct.clone()
	}
	return c, nil
}

// clone is a copy of ct that shares nothing mutable with it.
func (ct catalogTable) clone() catalogTable {
	ct.Schema = slices.Clone(ct.Schema)
	ct.RemotePath = slices.Clone(ct.RemotePath)
	ct.Files = slices.Clone(ct.Files)
	ct.MonthRows = maps.Clone(ct.MonthRows)
	return ct
}

// paths are the data files the entry's view reads, relative to the data
// folder.
func (ct catalogTable) paths() []string {
	var out []string
	if ct.Version != "" {
		out = append(out, ct.Version)
	}
	for _, p := range ct.Files {
		out = append(out, p.Path)
	}
	return out
}

// restore puts table back to the entry it had when the catalog was loaded
// (the files only the newer entry read are retired, those of the loaded
// one brought back). It reports false when there is nothing to go back
// to (no loaded entry, or the table already has it): the table is then
// removed, its files retired.
func (c *catalog) restore(table string, now time.Time) bool {
	cur := c.Tables[table]
	prev, had := c.loaded[table]
	back := had && !reflect.DeepEqual(cur, prev)
	keep := map[string]bool{}
	if back {
		for _, p := range prev.paths() {
			keep[p] = true
			c.unretire(p)
		}
	}
	for _, p := range cur.paths() {
		if !keep[p] {
			c.retire([]string{p}, now)
		}
	}
	if back {
		c.Tables[table] = prev.clone()
	} else {
		delete(c.Tables, table)
	}
	return back
}

func (c *catalog) save(dir string) error {
	path := filepath.Join(dir, catalogFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+parquetfile.TempMarker+"*")
	if err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone already once it replaced the catalog
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("save catalog: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("save catalog: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save catalog: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save catalog: %w", err)
	}
	return parquetfile.ReplaceFile(tmp, path)
}
