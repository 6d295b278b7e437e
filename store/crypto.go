package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// The data key (DEK) is 256 random bits that encrypt every credential value
// and the CA key with AES-256-GCM. Each ciphertext's associated data is the
// bucket name, a 0x00 byte and the record's key, so a ciphertext moved to
// another record (or bucket) no longer opens. The DEK is wrapped by a key
// (KEK) derived from the master password with Argon2id; the password is
// verified by opening the wrapped DEK, never by a stored hash.

const (
	keyLen   = 32
	saltLen  = 16
	nonceLen = 12
)

// errDecrypt says a ciphertext did not authenticate. It never carries data.
var errDecrypt = errors.New("ciphertext does not authenticate (altered, or moved from another record)")

// sealer encrypts records with the DEK.
type sealer struct {
	aead cipher.AEAD
}

func newSealer(dek []byte) (*sealer, error) {
	if len(dek) != keyLen {
		return nil, fmt.Errorf("data key is %d bytes, want %d", len(dek), keyLen)
	}
	aead, err := newGCM(dek)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("init aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("init gcm: %w", err)
	}
	return aead, nil
}

// associatedData binds a ciphertext to bucket and record key.
func associatedData(bucket string, key []byte) []byte {
	ad := make([]byte, 0, len(bucket)+1+len(key))
	ad = append(ad, bucket...)
	ad = append(ad, 0)
	return append(ad, key...)
}

func sealWith(aead cipher.AEAD, bucket string, key, plaintext []byte) ([]byte, error) {
	out := make([]byte, nonceLen, nonceLen+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("read random nonce: %w", err)
	}
	return aead.Seal(out, out[:nonceLen], plaintext, associatedData(bucket, key)), nil
}

func openWith(aead cipher.AEAD, bucket string, key, ciphertext []byte) ([]byte, error) {
	if len(ciphertext) < nonceLen+aead.Overhead() {
		return nil, errDecrypt
	}
	pt, err := aead.Open(nil, ciphertext[:nonceLen], ciphertext[nonceLen:], associatedData(bucket, key))
	if err != nil {
		return nil, errDecrypt
	}
	return pt, nil
}

// seal encrypts plaintext for the record bucket/key.
func (c *sealer) seal(bucket string, key, plaintext []byte) ([]byte, error) {
	return sealWith(c.aead, bucket, key, plaintext)
}

// open decrypts the record bucket/key; the result is freshly allocated.
func (c *sealer) open(bucket string, key, ciphertext []byte) ([]byte, error) {
	return openWith(c.aead, bucket, key, ciphertext)
}

// validKDF refuses parameters argon2 cannot run or that would exhaust the
// machine (a crafted file must not make Open allocate without bound).
func validKDF(p KDFParams) error {
	switch {
	case p.Time < 1:
		return fmt.Errorf("kdf time %d must be at least 1", p.Time)
	case p.Threads < 1:
		return fmt.Errorf("kdf threads %d must be at least 1", p.Threads)
	case p.MemoryKiB < 8*uint32(p.Threads):
		return fmt.Errorf("kdf memory %d KiB must be at least 8 KiB per thread", p.MemoryKiB)
	case p.MemoryKiB > 4<<20:
		return fmt.Errorf("kdf memory %d KiB is above the 4 GiB limit", p.MemoryKiB)
	case p.Time > 64:
		return fmt.Errorf("kdf time %d is above the limit of 64", p.Time)
	}
	return nil
}

// deriveKEK runs Argon2id over the master password.
func deriveKEK(password, salt []byte, p KDFParams) []byte {
	return argon2.IDKey(password, salt, p.Time, p.MemoryKiB, p.Threads, keyLen)
}

// newKeys makes a fresh DEK and the record that protects it.
func newKeys(opt Options) (dek []byte, rec keysRecord, err error) {
	dek = make([]byte, keyLen)
	if _, err := rand.Read(dek); err != nil {
		return nil, rec, fmt.Errorf("read random data key: %w", err)
	}
	rec.V = 1
	if opt.Insecure {
		rec.Passwordless = true
		rec.DEK = dek
		return dek, rec, nil
	}
	rec.KDF = opt.KDF
	if rec.KDF == (KDFParams{}) {
		rec.KDF = DefaultKDF
	}
	if err := validKDF(rec.KDF); err != nil {
		return nil, rec, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	rec.Salt = make([]byte, saltLen)
	if _, err := rand.Read(rec.Salt); err != nil {
		return nil, rec, fmt.Errorf("read random salt: %w", err)
	}
	kek, err := newGCM(deriveKEK(opt.Password, rec.Salt, rec.KDF))
	if err != nil {
		return nil, rec, err
	}
	if rec.WrappedDEK, err = sealWith(kek, bucketMeta, metaDEKLabel, dek); err != nil {
		return nil, rec, fmt.Errorf("wrap data key: %w", err)
	}
	return dek, rec, nil
}

// unlock recovers the DEK from the key record with the options' password.
func unlock(rec keysRecord, opt Options) ([]byte, error) {
	if rec.Passwordless {
		if len(opt.Password) > 0 || !opt.Insecure {
			return nil, fmt.Errorf("%w: open it in passwordless mode without a master password", ErrPasswordless)
		}
		if len(rec.DEK) != keyLen {
			return nil, fmt.Errorf("%w: passwordless key record has no valid data key", errNotAStore)
		}
		return rec.DEK, nil
	}
	if len(opt.Password) == 0 {
		return nil, ErrPasswordRequired
	}
	if err := validKDF(rec.KDF); err != nil {
		return nil, fmt.Errorf("%w: stored kdf parameters: %w", errNotAStore, err)
	}
	kek, err := newGCM(deriveKEK(opt.Password, rec.Salt, rec.KDF))
	if err != nil {
		return nil, err
	}
	dek, err := openWith(kek, bucketMeta, metaDEKLabel, rec.WrappedDEK)
	if err != nil {
		return nil, fmt.Errorf("%w: check the master password and try again (the file was not changed)", ErrWrongPassword)
	}
	return dek, nil
}
