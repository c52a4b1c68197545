// C interface of the isolated SentencePiece library (see CMakeLists.txt for why it is isolated).
// Strings returned through `error` are NUL-terminated and truncated to error_len.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

// Loads a .model file; returns an opaque handle or NULL with the reason in error.
typedef void* (*mspm_load_fn)(const char* path, char* error, size_t error_len);
// Encodes UTF-8 text to ids. Returns the number of ids (which may exceed capacity: call again with more
// room), or -1 with the reason in error.
typedef int64_t (*mspm_encode_fn)(void* handle,
                                  const char* text,
                                  int32_t* ids,
                                  int64_t capacity,
                                  char* error,
                                  size_t error_len);
// Decodes ids to UTF-8 text into out (NUL-terminated); returns the full length, or -1 on error.
typedef int64_t (*mspm_decode_fn)(void* handle,
                                  const int32_t* ids,
                                  int64_t n,
                                  char* out,
                                  int64_t capacity,
                                  char* error,
                                  size_t error_len);
typedef int64_t (*mspm_vocab_size_fn)(void* handle);
typedef int32_t (*mspm_piece_to_id_fn)(void* handle, const char* piece);
typedef void (*mspm_free_fn)(void* handle);
// Trains a model with SentencePieceTrainer (arguments in its --flag=value form); returns 0 or -1 with error.
typedef int (*mspm_train_fn)(const char* args, char* error, size_t error_len);
}
