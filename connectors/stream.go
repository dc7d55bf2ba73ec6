package connectors

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
)

// Partitioning declares that a table lands in monthly partitions
// (data/<table>/month=YYYY-MM/*.parquet) and is kept by key group: every
// change to a key replaces all of that key's rows, and a delete removes them.
type Partitioning struct {
	// KeyColumn holds the key-group value (a string column), for example
	// "issue_key": an event for one issue replaces every row of that issue.
	KeyColumn string
	// TimeColumn is the data-time column (timestamp) whose month picks the
	// partition, for example the "created". Never arrival time.
	TimeColumn string
	// FullBackfillDeletes says versions are UTC microsecond timestamps and
	// a full backfill (Changes with no cursor) sees every key of the
	// source: after one, a key it did not see whose newest version is older
	// than the backfill's start (less ReconcileMargin) is deleted. This
	// removes what was deleted while no event reached us.
	FullBackfillDeletes bool
}

// ReconcileMargin is how much older than a full backfill's start a key's
// newest version must be for the backfill to delete it when it did not see
// the key: a search index lags behind its source (Jira's by seconds).
const ReconcileMargin = 5 * time.Minute

// Change is what one event (or one backfilled entity) says about one key
// group: its new rows in each table, or that it is gone.
type Change struct {
	// Key is the key-group value, the KeyColumn of every row below.
	Key string
	// Time is the data time: its UTC month is the partition of every row of
	// the change, in every table.
	Time time.Time
	// Version orders changes of one key: the highest wins, whatever order
	// they arrive in. Jira uses the updated time in microseconds.
	Version int64
	// Deleted says the key is gone: its rows disappear from every table.
	Deleted bool
	// Tables holds the key's complete new rows per table. A partitioned table
	// missing here has no rows for the key any more. The runtime releases the
	// batches.
	Tables map[string]arrow.RecordBatch
	// Keep names tables the change says nothing about: the key's rows there
	// stay as they are (an event that cannot vouch for the comments
	// keeps the stored ones). A table in Keep must not be in Tables.
	Keep []string
}

// Release frees the change's batches.
func (c Change) Release() {
	for _, r := range c.Tables {
		if r != nil {
			r.Release()
		}
	}
}

// Validate checks the change's own fields.
func (c Change) Validate() error {
	if c.Key == "" {
		return fmt.Errorf("change has an empty key")
	}
	if c.Time.IsZero() {
		return fmt.Errorf("change of key %s has no data time (it picks the month partition)", c.Key)
	}
	for _, k := range c.Keep {
		if c.Tables[k] != nil {
			return fmt.Errorf("change of key %s both keeps and replaces the rows of %s", c.Key, k)
		}
		if c.Deleted {
			return fmt.Errorf("change of key %s deletes the key but keeps the rows of %s", c.Key, k)
		}
	}
	return nil
}

// Streamer is implemented by connectors that declare Stream. Stream turns
// one pushed event (a webhook body, a CDC message) into changes of key
// groups. It may call the source (Jira re-fetches the issue).
type Streamer interface {
	Stream(ctx context.Context, event []byte) ([]Change, error)
}

// ChangeReader is implemented by connectors whose partitioned tables are
// backfilled as changes: one pass over the source yields every key group
// with its rows in all tables, so a run does not fetch an entity once per
// table. IncrementalValue in opts is the last committed version cursor
// (RFC 3339), empty for a full backfill.
type ChangeReader interface {
	Changes(ctx context.Context, opts ReadOptions) iter.Seq2[Change, error]
}
