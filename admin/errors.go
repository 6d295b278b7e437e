package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// apiError is an error with its HTTP status and API code. Its message is
// shown to the client, so it never holds a secret.
type apiError struct {
	status     int
	code       string
	msg        string
	retryAfter int // seconds, for 429
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, code, msg string) *apiError {
	return &apiError{status: status, code: code, msg: msg}
}

var (
	errUnauthorized = errorf(http.StatusUnauthorized, api.CodeUnauthorized,
		"missing, expired or unknown session token: log in again")
	errBadCredentials = errorf(http.StatusUnauthorized, api.CodeUnauthorized, "wrong email or password")
	errForbidden      = errorf(http.StatusForbidden, api.CodeForbidden, "your role does not allow this")
)

// writeError is the one place errors become responses. Store errors map by
// kind; anything unexpected is logged and answered 500 without detail.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := s.toAPIError(r, err)
	if ae.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.retryAfter))
	}
	writeJSON(w, ae.status, api.ErrorBody{Error: api.ErrorDetail{Code: ae.code, Message: ae.msg}})
}

func (s *Server) toAPIError(r *http.Request, err error) *apiError {
	if ae := mapError(err); ae != nil {
		return ae
	}
	s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	return errInternal
}

var errInternal = errorf(http.StatusInternalServerError, api.CodeInternal, "internal error; see the server log")

// mapError maps errors of known kinds to API errors; nil for the rest.
func mapError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var tooLarge *http.MaxBytesError
	var verr *policy.ValidationError
	switch {
	case errors.As(err, &tooLarge):
		return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge,
			"request body is larger than "+strconv.FormatInt(tooLarge.Limit, 10)+" bytes")
	case errors.As(err, &verr):
		return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid "+verr.Error())
	case errors.Is(err, store.ErrStale):
		return errorf(http.StatusConflict, api.CodeStale, err.Error())
	case errors.Is(err, store.ErrNotPending):
		return errorf(http.StatusConflict, api.CodeNotPending, err.Error())
	case errors.Is(err, store.ErrLimit):
		return errorf(http.StatusTooManyRequests, api.CodeLimit, err.Error())
	case errors.Is(err, store.ErrForbidden):
		return errorf(http.StatusForbidden, api.CodeForbidden, err.Error())
	case errors.Is(err, store.ErrInvalid):
		return errorf(http.StatusBadRequest, api.CodeInvalid, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return errorf(http.StatusNotFound, api.CodeNotFound, err.Error())
	case errors.Is(err, store.ErrExists):
		return errorf(http.StatusConflict, api.CodeExists, err.Error())
	case errors.Is(err, store.ErrSetupDone):
		return errorf(http.StatusConflict, api.CodeSetupDone, "setup is already done: log in instead")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
