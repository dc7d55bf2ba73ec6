// Package connectors is the Connector Kit SDK: capability flags, the
// protocol types (TableInfo, ReadOptions, RemoteAttachInfo, RunStats), one
// interface per capability, connector.yaml manifests with config validation,
// and the registry that maps connector names to factories.
//
// A connector implements Connector plus the interface of each capability it
// declares; the runtime only calls what is declared.
package connectors
