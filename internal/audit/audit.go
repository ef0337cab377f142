// Package audit names the audit events and log fields that operators read and
// alert on; the names are a stable interface, defined here once.
package audit

// Event names, logged in the field Event. Each is one line per occurrence.
const (
	ConnRejected    = "conn_rejected"    // a connection closed before TLS (reason, addr)
	HandshakeFailed = "handshake_failed" // TLS handshake refused or timed out (reason, addr)
	SessionOpened   = "session_opened"   // a yamux session is up (identity, addr)
	SessionClosed   = "session_closed"   // a session ended (identity, addr, duration)
	SessionFailed   = "session_failed"   // the client could not establish a session (reason)
	SessionRevoked  = "session_revoked"  // a live session closed because its peer is no longer trusted (reason)
	StreamOpened    = "stream_opened"    // a stream passed its header and reached the backend
	StreamRefused   = "stream_refused"   // a stream got a non-zero status (route, status)
	StreamClosed    = "stream_closed"    // a stream ended (route, identity, bytes each way, duration)
	ListenerStarted = "listener_started" // a listener is bound (addr); tests read the bound address from it
	ListenerStopped = "listener_stopped" // a listener was closed by a reload (addr)
	ServerStopping  = "server_stopping"  // shutdown began
	ServerStopped   = "server_stopped"   // Serve returned; the process exits
	ClientStopped   = "client_stopped"   // Run returned; the process exits
	SessionExpiring = "session_expiring" // a session reached its maximum lifetime and was told to go away (lifetime)
	ReloadApplied   = "reload_applied"
	ReloadRejected  = "reload_rejected"

	// Reverse tunnels (docs/PROTOCOL.md section 7): a client publishes a
	// name the server exposes on a listener of its own.
	PublishAdded   = "publish_added"   // a publication is live (expose; the server: identity, addr; the client: backend)
	PublishRefused = "publish_refused" // a publication was refused (expose, status, reason; the server: rule_set)
	PublishRemoved = "publish_removed" // a live publication ended (expose, reason, duration)

	ProtocolViolation = "protocol_violation" // a session ended because its peer broke the yamux protocol or a session bound (kind)
	StreamReset       = "stream_reset"       // the server reset an open stream for a limit (reason)

	CRLRefreshed   = "crl_refreshed"    // a CRL was fetched and verified (url)
	CRLFetchFailed = "crl_fetch_failed" // a fetch failed; the previous CRL stays (url, error)
	CRLUnavailable = "crl_unavailable"  // no usable CRL for a certificate that needs one (url or source, reason)
	CRLRejected    = "crl_rejected"     // a CRL does not verify against its issuer and is ignored (source)
	CRLLimit       = "crl_limit"        // a CRL store cap was hit (limit, url)
	RevocationOff  = "revocation_disabled"
	CARevoked      = "ca_revoked"    // a CA certificate of the bundle is revoked; chains through it are refused (serial, subject, source)
	CAReinstated   = "ca_reinstated" // a bundle CA that was revoked or had no usable CRL is usable again (serial, subject)
	CAUnchecked    = "ca_unchecked"  // bundle intermediates whose issuer is not in the bundle: revocation cannot be checked

	IdentityUpdated      = "identity_updated"       // a SPIFFE source took in a new SVID or bundle set (spiffe_id, serial, not_after)
	IdentitySourceFailed = "identity_source_failed" // a source could not update; the last material stays (source, error, state)
	IdentityApplied      = "identity_applied"       // a live source's new material is in use; sessions whose CA left the bundle were closed (source, sessions_closed)

	OCSPRefreshed   = "ocsp_refreshed"        // an OCSP response was fetched and verified (url, serial, cert_status)
	OCSPFetchFailed = "ocsp_fetch_failed"     // an OCSP fetch failed or its response did not verify; the previous one stays (url, error)
	OCSPUnavailable = "ocsp_unavailable"      // no usable OCSP response for a certificate that needs one (url, reason)
	StapleRefreshed = "ocsp_staple_refreshed" // the server's own OCSP staple was fetched or read (source, next_update)
	StapleFailed    = "ocsp_staple_failed"    // the server's own staple could not be renewed (source, error)

	ConfigWarning = "config_warning" // a configuration that works but is probably not what was meant (warning)
	AdminRequest  = "admin_request"  // an admin endpoint that changes state was called (path, addr)
	AdminRefused  = "admin_refused"  // an admin request was refused (reason, path, addr)

	SessionClosing   = "session_closing"   // an operator asked to close a session (POST /status/close); session_closed follows with reason admin_close
	CertExpiring     = "cert_expiring"     // the process's own certificate expires within 7 days (not_after, expires_in_s); repeated daily
	WatchdogWithheld = "watchdog_withheld" // a main loop stopped turning: no more systemd watchdog pings (error)
	WatchdogResumed  = "watchdog_resumed"  // the main loops run again and the pings resume
)

// ReasonAdminClose is the reason of a session_closed line for a session an
// operator closed (tunnel status --close).
const ReasonAdminClose = "admin_close"

// Values of the Direction field.
const (
	DirectionForward = "forward" // a client's connection to a server route
	DirectionReverse = "reverse" // an inbound connection of an expose, to a client's published target
)

// Field names. Values that come from a peer are capped in length by the
// code that logs them.
const (
	Event      = "event"
	Reason     = "reason"
	Addr       = "addr"        // the peer's address, host:port (IPv6 in brackets, IPv4-mapped unmapped)
	SessionID  = "session_id"  // the process-unique id of a session, on each of its session and stream lines
	Listen     = "listen"      // a local listening address
	Route      = "route"       // a route name
	Status     = "status"      // a wire status name
	Backend    = "backend"     // a backend target
	BytesIn    = "bytes_in"    // bytes from the client side towards the backend
	BytesOut   = "bytes_out"   // bytes from the backend towards the client side
	DurationMS = "duration_ms" // elapsed milliseconds
	Error      = "error"       // a local error's text; never certificate or key contents
	Component  = "component"   // the subsystem that logged the line
	Count      = "count"       // how many events a rate-limited line stands for
	URL        = "url"         // a CRL Distribution Point
	Source     = "source"      // a CRL's file path or URL
	Serial     = "serial"      // a certificate serial number, lowercase hex
	Issuer     = "issuer"      // a CA's subject
	Limit      = "limit"       // which cap was hit
	RuleSet    = "rule_set"    // the per-route rules that refused a stream or closed a session ("routes.db")
	Trigger    = "trigger"     // what started a reload: sighup, admin or file_changed
	Kind       = "kind"        // which protocol violation
	Subject    = "subject"     // a certificate's subject
	Warning    = "warning"     // what a config_warning is about: allow_covers_all, key_file_mode
	Path       = "path"        // an admin endpoint's path, or a file
	Flag       = "flag"        // the flag of the setting a config_warning is about
	Expose     = "expose"      // the name of a reverse tunnel: exposed by the server, published by clients
	Direction  = "direction"   // of a stream: forward (the client opened it) or reverse (the server did, for an expose)
	Inbound    = "inbound"     // the address an expose's inbound connection came from, host:port

	// Fields of reload_applied.
	RestartNeeded  = "restart_needed"  // config keys that changed but take effect only after a restart
	SessionsClosed = "sessions_closed" // live sessions the new configuration no longer accepts
	AllowPrefixes  = "allow_prefixes"  // prefixes in the new allowlist
	Routes         = "routes"          // routes configured now
	Forwards       = "forwards"        // forwards configured now

	IdentityCN          = "identity_cn"
	IdentitySANs        = "identity_sans"
	IdentitySerial      = "identity_serial"
	IdentityFingerprint = "identity_fingerprint"
)
