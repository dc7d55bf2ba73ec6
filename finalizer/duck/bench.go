package duck

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"time"
)

// CopyBench measures DuckDB's own Parquet writer on the rows of files:
// they are loaded into an in-memory table first (not timed), then written
// with COPY … TO dst (FORMAT parquet, COMPRESSION zstd), which is timed.
// It returns the rows, the COPY's duration and the file's size.
func CopyBench(ctx context.Context, files []string, dst string) (rows int64, took time.Duration, size int64, err error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return 0, 0, 0, err
	}
	defer db.Close()
	// One connection: the temporary table lives in it.
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "CREATE TABLE bench AS SELECT * FROM read_parquet("+fileList(files)+")"); err != nil {
		return 0, 0, 0, fmt.Errorf("load the rows into DuckDB: %w", err)
	}
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM bench").Scan(&rows); err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	if _, err := db.ExecContext(ctx, "COPY bench TO "+quoteLit(dst)+" (FORMAT parquet, COMPRESSION zstd)"); err != nil {
		return 0, 0, 0, fmt.Errorf("copy to parquet: %w", err)
	}
	took = time.Since(start)
	st, err := os.Stat(dst)
	if err != nil {
		return 0, 0, 0, err
	}
	return rows, took, st.Size(), nil
}
