package bigquery_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/bigquery"
	"github.com/agnes-ai/connector-kit/connectors/bigquery/bigquerytest"
	"github.com/agnes-ai/connector-kit/connectors/connectortest"
	"github.com/agnes-ai/connector-kit/connectors/connectortest/extracttest"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

const project = "agnes-data"

var ts0 = time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)

// everyType is a table with a column of every BigQuery type, nested ones
// included.
func everyType(rows int) *bigquerytest.Table {
	fields := []bigquery.Field{
		{Name: "id", Type: "INT64", Mode: "REQUIRED"},
		{Name: "s", Type: "STRING"},
		{Name: "f", Type: "FLOAT64"},
		{Name: "n", Type: "NUMERIC"},
		{Name: "bn", Type: "BIGNUMERIC"},
		{Name: "b", Type: "BOOL"},
		{Name: "d", Type: "DATE"},
		{Name: "dt", Type: "DATETIME"},
		{Name: "ts", Type: "TIMESTAMP"},
		{Name: "t", Type: "TIME"},
		{Name: "by", Type: "BYTES"},
		{Name: "j", Type: "JSON"},
		{Name: "g", Type: "GEOGRAPHY"},
		{Name: "tags", Type: "STRING", Mode: "REPEATED"},
		{Name: "addr", Type: "RECORD", Fields: []bigquery.Field{{Name: "city", Type: "STRING"}, {Name: "zip", Type: "INT64"}}},
		{Name: "items", Type: "RECORD", Mode: "REPEATED", Fields: []bigquery.Field{{Name: "sku", Type: "STRING"}, {Name: "qty", Type: "INT64"}}},
	}
	tbl := &bigquerytest.Table{Dataset: "sales", ID: "orders", Description: "Orders", Fields: fields, NumBytes: 1 << 20, RowCount: rows}
	tbl.Gen = func(i int) []any {
		if i%5 == 4 {
			return []any{int64(i), nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, []any{}, nil, []any{}}
		}
		return []any{int64(i), "row " + string(rune('a'+i%26)), float64(i) / 4, "12345.678901234", "123456789012345678901234567890.12345678901234567890123456789",
			i%2 == 0, ts0, ts0, ts0.Add(time.Duration(i) * time.Second), ts0, []byte{0, 1, 2, byte(i)}, `{"k": 1}`, "POINT(1 2)",
			[]any{"x", "y"}, []any{"Prague", int64(11000 + i)}, []any{[]any{"A", int64(1)}, []any{"B", int64(2)}}}
	}
	return tbl
}

func fakeBQ(t testing.TB) *bigquerytest.Server {
	t.Helper()
	srv := bigquerytest.New(project)
	t.Cleanup(srv.Close)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", srv.KeyFile(t))
	t.Setenv("GCE_METADATA_HOST", "")
	return srv
}

func open(t testing.TB, srv *bigquerytest.Server, o bigquery.Options) *bigquery.Connector {
	t.Helper()
	o.Project, o.Endpoint = project, srv.URL
	if o.MaxRetries == 0 {
		o.MaxRetries = 3
	}
	o.MaxRetryWait = time.Second
	c, err := bigquery.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDiscover(t *testing.T) {
	srv := fakeBQ(t)
	srv.Put(everyType(3))
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "customers", Fields: []bigquery.Field{{Name: "id", Type: "INT64"}}})
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "big_orders", Type: "VIEW", Fields: []bigquery.Field{{Name: "id", Type: "INT64"}}})
	srv.Put(&bigquerytest.Table{Dataset: "web", ID: "daily", Type: "MATERIALIZED_VIEW", Fields: []bigquery.Field{{Name: "d", Type: "DATE"}}})
	srv.Put(&bigquerytest.Table{Dataset: "web", ID: "ext", Type: "EXTERNAL", Fields: []bigquery.Field{{Name: "x", Type: "STRING"}}})
	srv.Put(&bigquerytest.Table{Dataset: "web", ID: "bad-name", Fields: []bigquery.Field{{Name: "x", Type: "STRING"}}})
	srv.Put(&bigquerytest.Table{Dataset: "zeta", ID: "t", Fields: []bigquery.Field{{Name: "x", Type: "STRING"}}})
	srv.Forbid("secret")
	c := open(t, srv, bigquery.Options{BillingProject: "agnes-billing"})
	tables, err := c.Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	by := map[string]connectors.TableInfo{}
	for _, ti := range tables {
		names = append(names, ti.Name)
		by[ti.Name] = ti
	}
	if want := []string{"sales_big_orders", "sales_customers", "sales_orders", "web_daily", "zeta_t"}; !slices.Equal(names, want) {
		t.Errorf("tables %v, want %v (datasets and tables paged 2 at a time)", names, want)
	}
	o := by["sales_orders"]
	if !o.PreferRemote || !slices.Equal(o.RemotePath, []string{"sales", "orders"}) || o.Description != "Orders" {
		t.Errorf("sales_orders %+v", o)
	}
	want := map[string]string{"id": "int64", "s": "utf8", "f": "float64", "n": "decimal(38, 9)", "bn": "utf8", "b": "bool", "d": "date32",
		"dt": "timestamp[us]", "ts": "timestamp[us, tz=UTC]", "t": "time64[us]", "by": "binary", "j": "utf8", "g": "utf8",
		"tags": "list<item: utf8, nullable>", "addr": "struct<city: utf8 nullable, zip: int64 nullable>", "items": "list<item: struct<sku: utf8 nullable, qty: int64 nullable>, nullable>"}
	for _, f := range o.Schema.Fields() {
		if f.Type.String() != want[f.Name] {
			t.Errorf("%s: %s, want %s", f.Name, f.Type, want[f.Name])
		}
	}
	v := by["sales_big_orders"]
	if v.RemoteQuery == nil || v.RemoteQuery.Function != "bigquery_query" ||
		!slices.Equal(v.RemoteQuery.Args, []string{"agnes-billing", "SELECT * FROM `agnes-data.sales.big_orders`"}) {
		t.Errorf("view: %+v", v.RemoteQuery)
	}
	if by["web_daily"].RemoteQuery == nil {
		t.Error("a materialized view is read through bigquery_query too")
	}
	skipped := strings.Join(c.Skipped(), "\n")
	for _, w := range []string{"dataset secret", "Access Denied", "web.ext", "EXTERNAL", "web.bad-name", "config.table_names"} {
		if !strings.Contains(skipped, w) {
			t.Errorf("skipped reasons lack %q:\n%s", w, skipped)
		}
	}
	ra, _ := c.Remote(context.Background())
	if ra != (connectors.RemoteAttachInfo{Extension: "bigquery", URL: "project=" + project, Alias: "bq"}) {
		t.Errorf("remote %+v", ra)
	}
	// Names collide only through table_names; the override resolves them.
	c = open(t, srv, bigquery.Options{Names: map[string]string{"zeta.t": "sales_orders"}})
	c.Discover(context.Background())
	if s := strings.Join(c.Skipped(), "\n"); !strings.Contains(s, "is also the name of") {
		t.Errorf("collision not reported: %s", s)
	}
}

func TestMaterialize(t *testing.T) {
	srv := fakeBQ(t)
	srv.Put(everyType(25))
	srv.PendingPolls = 2
	c := open(t, srv, bigquery.Options{PageSize: 7})
	var recs []arrow.RecordBatch
	for rec, err := range c.Read(context.Background(), "sales_orders", connectors.ReadOptions{BatchSize: 10}) {
		if err != nil {
			t.Fatal(err)
		}
		rec.Retain()
		recs = append(recs, rec)
	}
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	var n int64
	for _, r := range recs {
		n += r.NumRows()
	}
	if n != 25 || srv.Requests("/bigquery/v2/projects/"+project+"/queries/") < 5 {
		t.Fatalf("%d rows over %d result requests; want 25 over several pages after polling", n, srv.Requests("/bigquery/v2/projects/"+project+"/queries/"))
	}
	r := recs[0]
	col := func(name string) arrow.Array { return r.Column(r.Schema().FieldIndices(name)[0]) }
	if col("n").(*array.Decimal128).ValueStr(0) != "12345.678901234" {
		t.Errorf("numeric %s", col("n").(*array.Decimal128).ValueStr(0))
	}
	if got := time.UnixMicro(int64(col("ts").(*array.Timestamp).Value(1))).UTC(); !got.Equal(ts0.Add(time.Second)) {
		t.Errorf("timestamp %s, want %s (float seconds to the microsecond)", got, ts0.Add(time.Second))
	}
	if got := time.UnixMicro(int64(col("dt").(*array.Timestamp).Value(0))).UTC(); !got.Equal(ts0) {
		t.Errorf("datetime %s", got)
	}
	if got := col("t").(*array.Time64).Value(0); int64(got) != int64(3*time.Hour+4*time.Minute+5*time.Second+123456*time.Microsecond)/1000 {
		t.Errorf("time %d µs", got)
	}
	if got := col("by").(*array.Binary).Value(3); string(got) != "\x00\x01\x02\x03" {
		t.Errorf("bytes %v", got)
	}
	if got := col("bn").(*array.String).Value(0); !strings.HasPrefix(got, "123456789012345678901234567890.1234") {
		t.Errorf("bignumeric %s", got)
	}
	if col("b").(*array.Boolean).Value(0) != true || col("d").(*array.Date32).Value(0).ToTime().Format("2006-01-02") != "2024-01-02" {
		t.Error("bool or date")
	}
	tags := col("tags").(*array.List)
	if s, e := tags.ValueOffsets(0); e-s != 2 || tags.ListValues().(*array.String).Value(int(s)+1) != "y" {
		t.Errorf("repeated: %v", tags)
	}
	addr := col("addr").(*array.Struct)
	if addr.Field(0).(*array.String).Value(0) != "Prague" || addr.Field(1).(*array.Int64).Value(2) != 11002 {
		t.Errorf("record: %v", addr)
	}
	items := col("items").(*array.List)
	if s, e := items.ValueOffsets(1); e-s != 2 || items.ListValues().(*array.Struct).Field(0).(*array.String).Value(int(s)+1) != "B" {
		t.Errorf("repeated record: %v", items)
	}
	if !col("s").IsNull(4) || !col("ts").IsNull(4) || !col("addr").IsNull(4) {
		t.Error("nulls lost")
	}
}

func TestByteCapAndGoneTable(t *testing.T) {
	srv := fakeBQ(t)
	srv.Put(everyType(3))
	c := open(t, srv, bigquery.Options{MaxBytes: 1000})
	for _, err := range c.Read(context.Background(), "sales_orders", connectors.ReadOptions{}) {
		if err == nil || !strings.Contains(err.Error(), "would scan 1048576 bytes") || !strings.Contains(err.Error(), "max_bytes_per_materialize") {
			t.Errorf("byte cap: %v", err)
		}
		break
	}
	if srv.Requests("/bigquery/v2/projects/"+project+"/queries") != 1 {
		t.Error("a refused query must not run after its dry run")
	}
	c = open(t, srv, bigquery.Options{})
	if _, err := c.Discover(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Remove("sales", "orders")
	for _, err := range c.Read(context.Background(), "sales_orders", connectors.ReadOptions{}) {
		if !errors.Is(err, bigquery.ErrNotFound) || !strings.Contains(err.Error(), "gone") {
			t.Errorf("a vanished table: %v", err)
		}
		break
	}
}

func TestRetriesAndTokens(t *testing.T) {
	srv := fakeBQ(t)
	srv.Put(everyType(3))
	srv.Fail("/bigquery/v2/projects/"+project+"/datasets", http.StatusTooManyRequests, 1, "rateLimitExceeded")
	srv.Fail("/bigquery/v2/projects/"+project+"/datasets/sales/tables", http.StatusForbidden, 1, "rateLimitExceeded")
	srv.Fail("/bigquery/v2/projects/"+project+"/datasets/sales/tables/orders", http.StatusServiceUnavailable, 2, "backendError")
	c := open(t, srv, bigquery.Options{})
	if _, err := c.Discover(context.Background()); err != nil {
		t.Fatalf("429, 403 rateLimitExceeded and 503 were not retried: %v", err)
	}
	if srv.TokensIssued() != 1 {
		t.Errorf("%d tokens for one discovery, want 1 (reused)", srv.TokensIssued())
	}
	// A revoked token: one 401, fresh credentials, the call goes through.
	srv.Revoke()
	if _, err := c.Discover(context.Background()); err != nil {
		t.Fatalf("after a revoked token: %v", err)
	}
	if srv.TokensIssued() != 2 {
		t.Errorf("%d tokens after a revocation, want 2", srv.TokensIssued())
	}
	// Credentials the token endpoint refuses: a clear error, no key material.
	other := bigquerytest.New(project)
	defer other.Close()
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", other.KeyFile(t)) // its token_uri is the other fake
	other.Close()
	c = open(t, srv, bigquery.Options{MaxRetries: 1})
	_, err := c.Discover(context.Background())
	if err == nil || strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("unreachable token endpoint: %v", err)
	}
}

func TestMetadataServer(t *testing.T) {
	srv := fakeBQ(t)
	srv.Put(everyType(2))
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("GCE_METADATA_HOST", strings.TrimPrefix(srv.URL, "http://"))
	c := open(t, srv, bigquery.Options{})
	if err := c.Check(context.Background()); err != nil {
		t.Fatalf("metadata-server credentials: %v", err)
	}
	if srv.Requests("/computeMetadata/v1/instance/service-accounts/default/token") == 0 {
		t.Error("the metadata server was not asked")
	}
}

func TestContract(t *testing.T) {
	srv := fakeBQ(t)
	srv.Put(everyType(40))
	srv.Put(&bigquerytest.Table{Dataset: "sales", ID: "v", Type: "VIEW", Fields: []bigquery.Field{{Name: "id", Type: "INT64"}}})
	r := connectors.NewRegistry()
	bigquery.Register(r)
	reg, err := r.Lookup("bigquery")
	if err != nil {
		t.Fatal(err)
	}
	extracttest.Run(t, connectortest.Suite{
		Registration: reg,
		Config:       map[string]any{"project": project, "endpoint": srv.URL},
		Secrets:      []string{srv.PrivateKeyPEM()[40:120], "ya29.fake-1", "ya29.fake-2"},
		TableOptions: map[string]config.TableOptions{"sales_orders": {QueryMode: "materialized"}},
	})
}
