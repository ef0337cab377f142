//go:build !tunnel_testhooks

package alive

// testWedge does nothing outside the tunnel_testhooks build.
func testWedge(string) {}
