package connectors

import "errors"

var (
	// ErrUnknownCapability marks a capability name that is not one of
	// discover, read, stream, remote, write.
	ErrUnknownCapability = errors.New("unknown capability")
	// ErrUnknownConnector marks a connector name absent from the registry.
	ErrUnknownConnector = errors.New("unknown connector")
	// ErrInvalidManifest marks a connector.yaml that failed validation.
	ErrInvalidManifest = errors.New("invalid manifest")
	// ErrInvalidConfig marks connector config that does not satisfy the
	// manifest's config schema.
	ErrInvalidConfig = errors.New("invalid connector config")
	// ErrUnknownTable marks a table name the connector does not have.
	ErrUnknownTable = errors.New("unknown table")
	// ErrNotSupported marks a call to a capability the connector lacks.
	ErrNotSupported = errors.New("capability not supported")
	// ErrBadEvent marks a pushed event that can never be processed (a
	// malformed body): Stream wraps it, and the runtime dead-letters the
	// event at once instead of retrying it.
	ErrBadEvent = errors.New("bad event")
)
