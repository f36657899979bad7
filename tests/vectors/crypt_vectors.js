// Test vectors for common/zg_crypt.c, made by an implementation independent
// of zgate's: Node's built-in crypto (AES-256-GCM, HKDF-SHA256, SHA-256) and
// the tweetnacl package (NaCl secretbox, XSalsa20-Poly1305). Each value is
// built the way LiteLLM stores a secret (litellm/proxy/common_utils/
// encrypt_decrypt_utils.py):
//   v3:gcm:  key = HKDF-SHA256(salt key, no salt, info "litellm-at-rest-v3", 32)
//            "v3:gcm:" + urlsafe_b64(nonce12 || ciphertext || tag16)
//   v2:gcm:  key = SHA-256(salt key), same layout
//   legacy:  key = SHA-256(salt key), urlsafe_b64(nonce24 || secretbox), the
//            secretbox being tag16 || ciphertext as NaCl's box format lays it out
// Nonces are fixed (derived from the vector's label) so that re-running the
// script prints the same vectors, which tests/unit code embeds as constants.
//
// How to run (outside the repository, so that node_modules stays out of it):
//   mkdir /tmp/crypt-vectors && cd /tmp/crypt-vectors && npm install tweetnacl@1.0.3
//   NODE_PATH=/tmp/crypt-vectors/node_modules node /work/main/tests/vectors/crypt_vectors.js \
//       > /work/main/tests/vectors/crypt_vectors.txt
'use strict';
const crypto = require('crypto');
const nacl = require('tweetnacl');

function urlsafe (bytes) {
    //  Buffer's 'base64url' drops the padding; Python's urlsafe_b64encode keeps it
    return Buffer.from (bytes).toString ('base64').replace (/\+/g, '-').replace (/\//g, '_');
}

function nonceFor (label, size) {
    return crypto.createHash ('sha256').update ('nonce:' + label).digest ().subarray (0, size);
}

function gcm (key, nonce, plaintext) {
    const cipher = crypto.createCipheriv ('aes-256-gcm', key, nonce);
    const body = Buffer.concat ([cipher.update (plaintext), cipher.final ()]);
    return Buffer.concat ([nonce, body, cipher.getAuthTag ()]);
}

function v3 (saltKey, plaintext, label) {
    //  RFC 5869: an absent salt is HashLen zero bytes (which HMAC pads to the
    //  same key as an empty one: checked here so the choice is not a guess)
    const empty = crypto.hkdfSync ('sha256', Buffer.from (saltKey, 'utf8'), Buffer.alloc (0),
        Buffer.from ('litellm-at-rest-v3'), 32);
    const key = Buffer.from (crypto.hkdfSync ('sha256', Buffer.from (saltKey, 'utf8'),
        Buffer.alloc (32), Buffer.from ('litellm-at-rest-v3'), 32));
    if (!key.equals (Buffer.from (empty)))
        throw new Error ('HKDF: empty and zero-filled salts differ');
    return 'v3:gcm:' + urlsafe (gcm (key, nonceFor (label, 12), Buffer.from (plaintext, 'utf8')));
}

function v2 (saltKey, plaintext, label) {
    const key = crypto.createHash ('sha256').update (saltKey, 'utf8').digest ();
    return 'v2:gcm:' + urlsafe (gcm (key, nonceFor (label, 12), Buffer.from (plaintext, 'utf8')));
}

function legacy (saltKey, plaintext, label, standardAlphabet) {
    const key = new Uint8Array (crypto.createHash ('sha256').update (saltKey, 'utf8').digest ());
    const nonce = new Uint8Array (nonceFor (label, 24));
    const box = nacl.secretbox (new Uint8Array (Buffer.from (plaintext, 'utf8')), nonce, key);
    const raw = Buffer.concat ([Buffer.from (nonce), Buffer.from (box)]);
    return standardAlphabet? raw.toString ('base64'): urlsafe (raw);
}

const long = 'sk-proj-' + 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat (8);
const vectors = [
    ['v3 short',   'sk-1234',              'sk-test-0123456789abcdef', v3],
    ['v3 empty',   'sk-1234',              '', v3],
    ['v3 utf8',    'clé-salée ✓',          'ключ \u{1F511} "quoted"\t\\', v3],
    ['v3 long',    'LITELLM_SALT_KEY-x9',  long, v3],
    ['v2 short',   'sk-1234',              'sk-test-0123456789abcdef', v2],
    ['v2 utf8',    'clé-salée ✓',          'ключ \u{1F511}', v2],
    ['nacl short', 'sk-1234',              'sk-test-0123456789abcdef', legacy],
    ['nacl empty', 'sk-1234',              '', legacy],
    ['nacl utf8',  'clé-salée ✓',          'ключ \u{1F511} "quoted"', legacy],
    ['nacl long',  'LITELLM_SALT_KEY-x9',  long, legacy],
];

//  A legacy value whose base64 has '+' or '/' in the standard alphabet, to
//  exercise LiteLLM's fallback to standard base64: search labels until one has
let fallback = null;
for (let index = 0; !fallback; index++) {
    const value = legacy ('sk-1234', 'sk-standard-b64', 'nacl std ' + index, true);
    if (/[+/]/.test (value))
        fallback = ['nacl std ' + index, 'sk-1234', 'sk-standard-b64', value];
}

//  Printed as C string literals, ready to paste into the test's table; a
//  hex escape is closed with "" only where a hex digit follows it
function cstr (text) {
    const bytes = Array.from (Buffer.from (text, 'utf8'));
    let out = '"';
    bytes.forEach ((byte, index) => {
        if (byte >= 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x5c)
            out += String.fromCharCode (byte);
        else {
            out += '\\x' + byte.toString (16).padStart (2, '0');
            const next = bytes [index + 1];
            if (next !== undefined && /[0-9a-fA-F]/.test (String.fromCharCode (next)))
                out += '""';
        }
    });
    return out + '"';
}
for (const [label, saltKey, plaintext, make] of vectors)
    console.log ('{ ' + cstr (label) + ', ' + cstr (saltKey) + ', ' + cstr (plaintext) + ',\n  '
               + cstr (make (saltKey, plaintext, label)) + ' },');
console.log ('{ ' + fallback.slice (0, 3).map (cstr).join (', ') + ',\n  ' + cstr (fallback [3]) + ' },');
