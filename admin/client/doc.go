// Package client is the typed Go client of the admin HTTP API (/api/v1),
// used by the agent-vault CLI, tests and benchmarks. Errors the server
// answers come back as *APIError carrying the HTTP status and the API's
// error code.
//
// It may import admin/api, policy and audit; never the admin server, the
// store or the data path, so a program that only talks to the API stays
// small.
package client
