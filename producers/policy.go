package producers

// Source is what the producer needs to know of a configured source: its
// connector and the connector's config, which tables to sync and each
// table's policy. The app's configuration is translated into it (the
// producer does not read YAML).
type Source struct {
	Name      string
	Connector string
	Config    map[string]any
	// Tables limits a sync to these tables (empty: every table).
	Tables []string
	// SchemaPolicy is the default of every table: PolicyEvolve or
	// PolicyFreeze (empty: evolve).
	SchemaPolicy string
	// Options are the policies of single tables, by table name.
	Options map[string]TablePolicy
}

// Schema policies.
const (
	PolicyEvolve = "evolve"
	PolicyFreeze = "freeze"
)

// TablePolicy is how one table is synced.
type TablePolicy struct {
	// SchemaPolicy overrides the source's.
	SchemaPolicy string
	// IncrementalKey is the cursor column of an incremental read.
	IncrementalKey string
	// PrimaryKey overrides the connector's key.
	PrimaryKey []string
	// Incremental reads by the source's own change time.
	Incremental bool
	// QueryMode is local, remote or materialized ("": the connector's).
	QueryMode string
	// Query is the source's own query a materialized table is read by.
	Query string
}

// Table returns the effective policy of one table of the source.
func (s Source) Table(name string) TablePolicy {
	o := s.Options[name]
	if o.SchemaPolicy == "" {
		o.SchemaPolicy = s.SchemaPolicy
	}
	if o.SchemaPolicy == "" {
		o.SchemaPolicy = PolicyEvolve
	}
	return o
}

// SourceLookup returns a source by name.
type SourceLookup func(name string) (Source, error)
