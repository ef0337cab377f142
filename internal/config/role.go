package config

import (
	"os"

	"go.yaml.in/yaml/v3"
)

// RoleOfFile guesses whose config file path is, "server" or "client",
// from its top-level keys; "" if it cannot tell (loading it as either role
// then reports what is wrong).
func RoleOfFile(path string) string {
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var doc map[string]any
	if yaml.Unmarshal(data, &doc) != nil {
		return ""
	}
	for _, k := range []string{"forwards", "server", "server_name"} {
		if _, ok := doc[k]; ok {
			return "client"
		}
	}
	for _, k := range []string{"routes", "listen", "allow"} {
		if _, ok := doc[k]; ok {
			return "server"
		}
	}
	return ""
}
