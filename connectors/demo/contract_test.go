package demo_test

import (
	"testing"

	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/connectortest"
	"github.com/agnes-ai/connector-kit/connectors/connectortest/extracttest"
	"github.com/agnes-ai/connector-kit/connectors/demo"
)

func TestContract(t *testing.T) {
	r := connectors.NewRegistry()
	demo.Register(r)
	reg, err := r.Lookup("demo")
	if err != nil {
		t.Fatal(err)
	}
	extracttest.Run(t, connectortest.Suite{
		Registration: reg,
		Config:       map[string]any{"rows": 5000, "customer_rows": 500, "batch_size": 700},
		Incremental:  map[string]string{"orders": "id"},
	})
}
