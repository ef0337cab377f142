package audit

import "time"

// StreamClosedFields are the fields of a stream_closed line, the same for
// every kind of stream of both roles: bytes each way (in: towards the
// backend), the duration since start, and the error that ended the copy,
// if any. The result is a logrus.Fields for WithFields.
func StreamClosedFields(in, out int64, start time.Time, err error) map[string]any {
	f := map[string]any{Event: StreamClosed, BytesIn: in, BytesOut: out, DurationMS: time.Since(start).Milliseconds()}
	if err != nil {
		f[Error] = err.Error()
	}
	return f
}
