package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	t.Setenv("DEMO_ROWS", "500")
	cfg, err := Parse("agnes.yaml", []byte(`
data_dir: /srv/agnes
sources:
  - name: demo
    connector: demo
    config:
      rows: ${DEMO_ROWS}
      seed: ${DEMO_SEED:-7}
    tables: [orders]
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/srv/agnes" || len(cfg.Sources) != 1 {
		t.Fatalf("got %+v", cfg)
	}
	s, err := cfg.Source("demo")
	if err != nil {
		t.Fatal(err)
	}
	if s.Config["rows"] != 500 || s.Config["seed"] != 7 || s.Tables[0] != "orders" {
		t.Errorf("env not expanded: %+v", s)
	}
}

func TestDefault(t *testing.T) {
	cfg := Default()
	if cfg.DataDir != "./data" {
		t.Errorf("data dir %q", cfg.DataDir)
	}
	if s, err := cfg.Source("demo"); err != nil || s.Connector != "demo" {
		t.Errorf("default demo source: %+v %v", s, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		says       []string
	}{
		{"ErrMissingEnv", "sources:\n  - name: x\n    connector: demo\n    config: {token: \"${NO_SUCH_VAR_AGNES}\"}\n", []string{"NO_SUCH_VAR_AGNES", "is not set"}},
		{"ErrBadSourceName", "sources:\n  - name: my-source\n    connector: demo\n", []string{"agnes.yaml", "sources[0].name", "my-source"}},
		{"ErrBadTable", "sources:\n  - name: s\n    connector: demo\n    tables: [\"a b\"]\n", []string{"sources[0].tables[0]"}},
		{"ErrDuplicate", "sources:\n  - {name: s, connector: demo}\n  - {name: s, connector: demo}\n", []string{"defined twice"}},
		{"ErrNoConnector", "sources:\n  - name: s\n", []string{"sources[0].connector", "required"}},
		{"ErrUnknownField", "sourcez: []\n", []string{"sourcez"}},
		{"ErrTLSHalf", "nats:\n  tls: {cert: /etc/agnes/nats.pem}\n", []string{"nats.tls", "both cert and key"}},
		{"ErrScheduleCron5", "sources:\n  - {name: s, connector: demo, schedule: \"*/15 * * * *\"}\n", []string{"sources[0].schedule", "6 fields", "has 5"}},
		{"ErrScheduleAlias", "sources:\n  - {name: s, connector: demo, schedule: \"@fortnightly\"}\n", []string{"sources[0].schedule", "unknown alias", "@hourly"}},
		{"ErrScheduleEvery", "sources:\n  - {name: s, connector: demo, schedule: \"@every 500ms\"}\n", []string{"sources[0].schedule", "at least 1s"}},
		{"ErrScheduleDuration", "sources:\n  - {name: s, connector: demo, schedule: \"@every often\"}\n", []string{"sources[0].schedule", "not a duration"}},
		{"ErrScheduleField", "sources:\n  - {name: s, connector: demo, schedule: \"0 61 * * * *\"}\n", []string{"sources[0].schedule", "61"}},
		{"ErrScheduleZone", "sources:\n  - {name: s, connector: demo, schedule: \"@daily\", schedule_timezone: Mars/Olympus}\n", []string{"sources[0].schedule_timezone", "Mars/Olympus", "IANA"}},
		{"ErrScheduleZoneEvery", "sources:\n  - {name: s, connector: demo, schedule: \"@every 1m\", schedule_timezone: Europe/Prague}\n", []string{"sources[0].schedule", "not to @every"}},
		{"ErrScheduleInlineZone", "sources:\n  - {name: s, connector: demo, schedule: \"CRON_TZ=Europe/Prague 0 0 * * * *\"}\n", []string{"sources[0].schedule", "schedule_timezone"}},
		{"ErrTableSchedule", "sources:\n  - name: s\n    connector: demo\n    table_options:\n      orders: {schedule: \"@every x\"}\n", []string{"sources[0].table_options.orders.schedule"}},
		{"ErrWrongType", "sources: 5\n", []string{"agnes.yaml"}},
		{"ErrQueryMode", "sources:\n  - name: s\n    connector: demo\n    table_options:\n      t: {query_mode: remot}\n", []string{"table_options.t.query_mode", "local, remote, materialized"}},
		{"ErrTwoCursors", "sources:\n  - name: s\n    connector: demo\n    table_options:\n      t: {incremental: true, incremental_key: id}\n", []string{"table_options.t", "not both"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("agnes.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.says {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	_, err := Default().Source("nope")
	if !errors.Is(err, ErrUnknownSource) || !strings.Contains(err.Error(), "demo") {
		t.Errorf("got %v, want ErrUnknownSource listing demo", err)
	}
}

func TestExpandOnlyValues(t *testing.T) {
	t.Setenv("AGNES_TOKEN", "x: 1\n- injected")
	t.Setenv("AGNES_N", "12")
	cfg, err := Parse("agnes.yaml", []byte(`# ${NOT_SET_ANYWHERE} in a comment is left alone
sources:
  - name: s
    connector: demo
    config:
      token: ${AGNES_TOKEN}
      n: ${AGNES_N}
      quoted: "${AGNES_N}"
`))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Sources[0].Config
	if c["token"] != "x: 1\n- injected" {
		t.Errorf("an env value changed the YAML structure: %#v", c)
	}
	if c["n"] != 12 || c["quoted"] != "12" {
		t.Errorf("typing after expansion: n=%#v quoted=%#v", c["n"], c["quoted"])
	}
}

func TestTableOptions(t *testing.T) {
	cfg, err := Parse("a.yaml", []byte(`sources:
  - name: s
    connector: demo
    schema_policy: freeze
    table_options:
      orders: {incremental_key: updated_at, primary_key: [id], schema_policy: evolve}
      customers: {incremental_key: id}
`))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Sources[0]
	if o := s.Table("orders"); o.SchemaPolicy != PolicyEvolve || o.IncrementalKey != "updated_at" || o.PrimaryKey[0] != "id" {
		t.Errorf("orders %+v", o)
	}
	if o := s.Table("customers"); o.SchemaPolicy != PolicyFreeze {
		t.Errorf("customers inherits the source policy: %+v", o)
	}
	if o := Default().Sources[0].Table("x"); o.SchemaPolicy != PolicyEvolve {
		t.Errorf("default policy %q", o.SchemaPolicy)
	}
	_, err = Parse("a.yaml", []byte("sources:\n  - {name: s, connector: demo, schema_policy: lock}\n"))
	if err == nil || !strings.Contains(err.Error(), `"lock" is not one of evolve, freeze`) {
		t.Errorf("bad policy: %v", err)
	}
}

// TestSchedules: the source's and its tables' schedules, in the source's
// time zone; tables with their own are listed apart.
func TestSchedules(t *testing.T) {
	cfg, err := Parse("agnes.yaml", []byte(`
sources:
  - name: crm
    connector: demo
    schedule: "0 */15 * * * *"
    schedule_timezone: Europe/Prague
    table_options:
      orders: {schedule: "@hourly"}
      customers: {schema_policy: freeze}
  - name: demo
    connector: demo
`))
	if err != nil {
		t.Fatal(err)
	}
	crm, _ := cfg.Source("crm")
	got := crm.Schedules()
	want := []SourceSchedule{{Source: "crm", Spec: "0 */15 * * * *", Zone: "Europe/Prague"}, {Source: "crm", Table: "orders", Spec: "@hourly", Zone: "Europe/Prague"}}
	if !slices.Equal(got, want) {
		t.Errorf("schedules %+v, want %+v", got, want)
	}
	if st := crm.ScheduledTables(); !slices.Equal(st, []string{"orders"}) {
		t.Errorf("scheduled tables %v", st)
	}
	if demo, _ := cfg.Source("demo"); demo.Schedules() != nil {
		t.Errorf("an unscheduled source has schedules %+v", demo.Schedules())
	}
}
