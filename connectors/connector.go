package connectors

import (
	"context"
	"fmt"
	"iter"

	"github.com/apache/arrow-go/v18/arrow"
)

// TableInfo describes one table a connector offers.
type TableInfo struct {
	// Name becomes the view name in extract.duckdb; it must be a valid identifier.
	Name string
	// Schema is the Arrow schema every batch of the table has.
	Schema *arrow.Schema
	// Capabilities are the per-table capabilities, a subset of the connector's.
	Capabilities Capability
	// PrimaryKey lists the key columns, if the table has a key.
	PrimaryKey []string
	// Description is stored in _meta.
	Description string
	// Partition, when set, makes the table a monthly-partitioned, keyed
	// table fed by changes (see Change).
	Partition *Partitioning
	// RemotePath names a remote table inside the attached catalog, for
	// example {"in.c-main", "orders"} or {"dataset", "table"}; the extract
	// gets a view over <alias>.<path...>.
	RemotePath []string
	// RemoteQuery, instead of RemotePath, makes the remote view read a
	// table function of the attached catalog's extension (BigQuery views:
	// bigquery_query(project, sql)).
	RemoteQuery *RemoteQuery
	// PreferRemote publishes the table remote unless the source's
	// table_options say local or materialized (BigQuery's default).
	PreferRemote bool
}

// RemoteQuery is a remote view over a table function of the extension:
// SELECT * FROM <Function>('<Args[0]>', '<Args[1]>', ...).
type RemoteQuery struct {
	Function string
	Args     []string
}

// Skipper is implemented by connectors whose discovery leaves things out
// (a dataset the credentials cannot read, a table whose name cannot be made
// an identifier): Skipped says what and why, for the run statistics.
type Skipper interface {
	Skipped() []string
}

// ReadOptions are built by the runtime from config and state and passed to Read.
type ReadOptions struct {
	IncrementalKey   string // cursor column for incremental reads
	IncrementalValue string // last committed cursor value; empty means full read
	BatchSize        int    // target rows per batch
	// Query is the source's own query for the table
	// (table_options.<t>.query), for connectors that read by query.
	Query string
}

// DefaultBatchSize is the batch size used when ReadOptions.BatchSize is zero.
const DefaultBatchSize = 10_000

// RemoteAttachInfo describes an external catalog the analyst attaches through
// a DuckDB extension. TokenEnv is the name of an environment variable holding
// the credential, never the credential itself.
type RemoteAttachInfo struct {
	Extension string
	URL       string
	TokenEnv  string
	Alias     string
}

// RunStats summarises one run.
type RunStats struct {
	TablesExtracted int
	TablesFailed    int
	Rows            int64
	SchemaChanges   []string
	Errors          []string
	// Skipped lists what discovery left out, with the reason.
	Skipped []string
}

// Connector is what every connector implements: its declared capabilities.
// The runtime type-asserts the capability interfaces below only for the
// capabilities declared here.
type Connector interface {
	Capabilities() Capability
}

// Discoverer is implemented by connectors that declare Discover.
type Discoverer interface {
	Discover(ctx context.Context) ([]TableInfo, error)
}

// Reader is implemented by connectors that declare Read. Read yields record
// batches whose schema equals the table's declared schema, or a non-nil error
// that ends the read. A yielded batch is valid only until yield returns; the
// connector releases it afterwards, so a consumer that keeps it must Retain it.
type Reader interface {
	Read(ctx context.Context, table string, opts ReadOptions) iter.Seq2[arrow.RecordBatch, error]
}

// Remoter is implemented by connectors that declare Remote.
type Remoter interface {
	Remote(ctx context.Context) (RemoteAttachInfo, error)
}

// Writer is implemented by connectors that declare Write.
type Writer interface {
	Write(ctx context.Context, table string, rec arrow.RecordBatch) error
}

// CheckImplements reports an error when c declares a capability without
// implementing its interface.
func CheckImplements(name string, c Connector) error {
	caps := c.Capabilities()
	checks := []struct {
		cap Capability
		ok  bool
		fn  string
	}{
		{Discover, is[Discoverer](c), "Discover"},
		{Read, is[Reader](c), "Read"},
		{Stream, is[Streamer](c), "Stream"},
		{Remote, is[Remoter](c), "Remote"},
		{Write, is[Writer](c), "Write"},
	}
	for _, ch := range checks {
		if caps.Has(ch.cap) && !ch.ok {
			return fmt.Errorf("connector %s declares %s but has no %s method", name, ch.cap, ch.fn)
		}
	}
	return nil
}

func is[T any](c Connector) bool { _, ok := c.(T); return ok }

// SourceCursorReader is implemented by connectors whose incremental
// position is kept by the source (Keboola's change time) rather than a
// column. ReadChanged reads the rows of table changed since cursor (every
// row when cursor is empty; rows at the boundary may come again: the
// runtime merges by primary key) and returns with the batches a function
// giving the cursor of the next read, to call once the batches ended
// without error. The runtime commits that cursor only after the rows are
// published.
type SourceCursorReader interface {
	ReadChanged(ctx context.Context, table, cursor string, opts ReadOptions) (iter.Seq2[arrow.RecordBatch, error], func() string)
}
