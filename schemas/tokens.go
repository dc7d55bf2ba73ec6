package schemas

import "time"

// TokenBucket holds one record per API token (internal/tokens), keyed by
// the token's name: its role, expiry, last use and the SHA-256 of the
// token, never the token itself.
const TokenBucket = "AGNES_TOKENS"

// AuditStream keeps the audit entries (internal/tokens): tokens created,
// revoked and used from a new address, on "agnes.audit.<action>", for
// AuditRetention.
const AuditStream = "AGNES_AUDIT"

// AuditRetention is how long an audit entry is kept.
const AuditRetention = 400 * 24 * time.Hour

// AuditSubject is the subject of an audit entry of action (an identifier).
func AuditSubject(action string) string { return "agnes.audit." + action }
