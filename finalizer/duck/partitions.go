package duck

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
)

// winnersSQL selects, from files, the rows of the newest change of every
// key: the highest version, a delete before rows on a tie, then the highest
// event. Every column is kept, the hidden ones and delete markers included.
func winnersSQL(files []string, keyCol string, hive bool) string {
	opts := "union_by_name = true"
	if hive {
		opts = "hive_partitioning = true, " + opts
	}
	return "SELECT * FROM read_parquet(" + fileList(files) + ", " + opts + ") QUALIFY rank() OVER (PARTITION BY " +
		QuoteIdent(keyCol) + " ORDER BY " + schemas.VersionColumn + " DESC, " + schemas.DeletedColumn + " DESC, " +
		schemas.EventColumn + " DESC) = 1"
}

// PartitionedView is the body of a partitioned table's view: the newest
// rows per key, no deleted keys, no hidden columns, plus the hive month.
func PartitionedView(files []string, keyCol string) string {
	return "SELECT * EXCLUDE (" + schemas.VersionColumn + ", " + schemas.DeletedColumn + ", " + schemas.EventColumn + ") FROM (" +
		winnersSQL(files, keyCol, true) + ") WHERE NOT " + schemas.DeletedColumn
}

func fileList(files []string) string {
	lits := make([]string, len(files))
	for i, f := range files {
		lits[i] = quoteLit(f)
	}
	return "[" + strings.Join(lits, ", ") + "]"
}

// CountVisible counts what the view shows of files.
func CountVisible(ctx context.Context, db *sql.DB, files []string, keyCol string) (int64, error) {
	if len(files) == 0 {
		return 0, nil
	}
	var n int64
	err := db.QueryRowContext(ctx, "SELECT count(*) FROM ("+PartitionedView(files, keyCol)+")").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count partition rows: %w", err)
	}
	return n, nil
}

// Compact writes the newest change of every key of files into one
// file at dst (delete markers kept: an older change of a deleted key may
// still arrive). Dropping the older rows is safe because the view would
// never show them: a key's newest change among these files outranks them.
func Compact(ctx context.Context, db *sql.DB, files []string, keyCol, dst string) (rows, size int64, err error) {
	tmp := parquetfile.TempName(dst)
	defer os.Remove(tmp)
	// Sorted by key, so a key filter (the recount, an analyst's lookup)
	// skips row groups by their statistics.
	q := "COPY (" + winnersSQL(files, keyCol, false) + " ORDER BY " + QuoteIdent(keyCol) + ") TO " + quoteLit(tmp) +
		" (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE " + fmt.Sprint(parquetfile.DefaultRowGroupRows) + ")"
	if _, err := db.ExecContext(ctx, q); err != nil {
		return 0, 0, fmt.Errorf("compact: %w", err)
	}
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM read_parquet("+quoteLit(tmp)+")").Scan(&rows); err != nil {
		return 0, 0, fmt.Errorf("compact: %w", err)
	}
	fh, err := os.Open(tmp)
	if err != nil {
		return 0, 0, err
	}
	err = fh.Sync()
	st, serr := fh.Stat()
	fh.Close()
	if err != nil || serr != nil {
		return 0, 0, fmt.Errorf("compact: sync: %w", errors.Join(err, serr))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return 0, 0, fmt.Errorf("compact: %w", err)
	}
	return rows, st.Size(), nil
}

// CountChanged counts, among the keys newFiles hold, the rows the
// partitioned view of all shows without newFiles (before) and with them
// (after), in one scan restricted to those keys.
func CountChanged(ctx context.Context, db *sql.DB, all, newFiles []string, keyCol string) (before, after int64, err error) {
	key := QuoteIdent(keyCol)
	win := "rank() OVER (PARTITION BY " + key + " ORDER BY " + schemas.VersionColumn + " DESC, " + schemas.DeletedColumn + " DESC, " +
		schemas.EventColumn + " DESC) = 1"
	lits := make([]string, len(newFiles))
	for i, p := range newFiles {
		lits[i] = quoteLit(p)
	}
	q := "WITH x AS (SELECT " + key + ", " + schemas.VersionColumn + ", " + schemas.DeletedColumn + ", " + schemas.EventColumn +
		", _agnes_file IN (" + strings.Join(lits, ", ") + ") AS _new FROM read_parquet(" + fileList(all) +
		", union_by_name = true, filename = '_agnes_file') WHERE " + key + " IN (SELECT " + key + " FROM read_parquet(" + fileList(newFiles) +
		", union_by_name = true))) SELECT " +
		"(SELECT count(*) FROM (SELECT " + schemas.DeletedColumn + " FROM x WHERE NOT _new QUALIFY " + win + ") WHERE NOT " + schemas.DeletedColumn + "), " +
		"(SELECT count(*) FROM (SELECT " + schemas.DeletedColumn + " FROM x QUALIFY " + win + ") WHERE NOT " + schemas.DeletedColumn + ")"
	if err := db.QueryRowContext(ctx, q).Scan(&before, &after); err != nil {
		return 0, 0, fmt.Errorf("count rows of changed keys: %w", err)
	}
	return before, after, nil
}

// DeleteMarkers writes to tmp a delete marker (version at, no event) for
// every key whose newest change in old is a live row below version at
// that newFiles do not hold, and returns how many it wrote.
func DeleteMarkers(ctx context.Context, db *sql.DB, old, newFiles []string, keyCol, timeCol string, at int64, tmp string) (int64, error) {
	key, tcol := QuoteIdent(keyCol), QuoteIdent(timeCol)
	notSeen := " AND " + key + " NOT IN (SELECT " + key + " FROM read_parquet(" + fileList(newFiles) + ", union_by_name = true))"
	q := "COPY (SELECT DISTINCT " + key + ", " + tcol + ", CAST(" + fmt.Sprint(at) + " AS BIGINT) AS " + schemas.VersionColumn +
		", true AS " + schemas.DeletedColumn + ", CAST(0 AS BIGINT) AS " + schemas.EventColumn + " FROM (SELECT " + key + ", " + tcol + ", " +
		schemas.VersionColumn + ", " + schemas.DeletedColumn + " FROM read_parquet(" + fileList(old) + ", union_by_name = true) QUALIFY rank() OVER (PARTITION BY " +
		key + " ORDER BY " + schemas.VersionColumn + " DESC, " + schemas.DeletedColumn + " DESC, " + schemas.EventColumn + " DESC) = 1) WHERE NOT " +
		schemas.DeletedColumn + " AND " + schemas.VersionColumn + " < " + fmt.Sprint(at) + notSeen + " ORDER BY " + key + ") TO " + quoteLit(tmp) +
		" (FORMAT parquet, COMPRESSION zstd)"
	if _, err := db.ExecContext(ctx, q); err != nil {
		return 0, err
	}
	var n int64
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM read_parquet("+quoteLit(tmp)+")").Scan(&n); err != nil {
		return 0, err
	}
	return n, nil
}

// Open returns an in-memory DuckDB for the partition queries.
func Open() (*sql.DB, error) { return sql.Open("duckdb", "") }
