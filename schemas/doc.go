// Package schemas is the bus contract shared by the producer, writer and
// finalizer services: JetStream stream and subject names, message headers,
// event payloads, identifier rules and the Arrow IPC encoding of data batches.
// Services talk to each other only through the types in this package.
package schemas
