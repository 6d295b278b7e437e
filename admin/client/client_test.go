package client

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestNewAddresses(t *testing.T) {
	for in, want := range map[string]string{
		"":                        DefaultAddr,
		"127.0.0.1:9":             "http://127.0.0.1:9",
		"http://127.0.0.1:9/":     "http://127.0.0.1:9",
		"https://vault.example/x": "https://vault.example/x",
	} {
		c, err := New(in)
		if err != nil || c.BaseURL() != want {
			t.Errorf("New(%q) = %v, %v; want %s", in, c, err, want)
		}
	}
	for _, bad := range []string{"ftp://h:1", "http://", "http://u:p@h:1", "http://h:1/?q=1", "http://h:1/#f"} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%q) accepted", bad)
		}
	}
}

// TestErrorDecoding checks the client against answers a real HTTP server
// gives: an API error with Retry-After, and a non-API error page.
func TestErrorDecoding(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			t.Errorf("Authorization = %q", r.Header.Get("Authorization"))
		}
		switch r.URL.Path {
		case "/api/v1/login":
			if r.Header.Get("Content-Type") != "application/json" {
				t.Errorf("Content-Type = %q", r.Header.Get("Content-Type"))
			}
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"error":{"code":"rate_limited","message":"too many failed logins: wait 3 s"}}`))
		default:
			http.Error(w, "gateway says no", http.StatusBadGateway)
		}
	}))
	defer hs.Close()
	c, err := New(hs.URL, WithToken("tok"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Login(context.Background(), "a@b.c", "password")
	ae, ok := err.(*APIError)
	if !ok || ae.Status != 429 || ae.Code != "rate_limited" || ae.RetryAfter != 3*time.Second || !IsCode(err, "rate_limited") {
		t.Fatalf("login error = %#v", err)
	}
	if c.Token() != "tok" {
		t.Fatal("a failed login replaced the token")
	}
	_, err = c.Vaults(context.Background())
	if ae, ok := err.(*APIError); !ok || ae.Status != 502 || ae.Message == "" {
		t.Fatalf("non-API error = %#v", err)
	}
}
