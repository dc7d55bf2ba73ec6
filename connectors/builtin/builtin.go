// Package builtin registers the connectors compiled into the da binary.
package builtin

import (
	"github.com/agnes-ai/connector-kit/connectors"
	"github.com/agnes-ai/connector-kit/connectors/bigquery"
	"github.com/agnes-ai/connector-kit/connectors/demo"
	"github.com/agnes-ai/connector-kit/connectors/jira"
	"github.com/agnes-ai/connector-kit/connectors/keboola"
)

// Registry returns a registry holding every built-in connector.
func Registry() *connectors.Registry {
	r := connectors.NewRegistry()
	bigquery.Register(r)
	demo.Register(r)
	jira.Register(r)
	keboola.Register(r)
	return r
}
