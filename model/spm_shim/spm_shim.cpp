// The only translation unit that sees SentencePiece. Exported with a C interface and default visibility for
// exactly these functions; everything else stays hidden.
#include "model/spm_shim/spm_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

void set_error(char* error, size_t error_len, const std::string& what) {
    if (!error || error_len == 0)
        return;
    std::strncpy(error, what.c_str(), error_len - 1);
    error[error_len - 1] = '\0';
}

}  // namespace

#define MSPM_EXPORT extern "C" __attribute__((visibility("default")))

MSPM_EXPORT void* mspm_load(const char* path, char* error, size_t error_len) {
    auto* sp = new sentencepiece::SentencePieceProcessor();
    const auto status = sp->Load(path);
    if (!status.ok()) {
        set_error(error, error_len, status.ToString());
        delete sp;
        return nullptr;
    }
    return sp;
}

MSPM_EXPORT int64_t
mspm_encode(void* handle, const char* text, int32_t* ids, int64_t capacity, char* error, size_t error_len) {
    auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(handle);
    std::vector<int> out;
    const auto status = sp->Encode(text, &out);
    if (!status.ok()) {
        set_error(error, error_len, status.ToString());
        return -1;
    }
    for (int64_t i = 0; i < static_cast<int64_t>(out.size()) && i < capacity; ++i)
        ids[i] = out[i];
    return static_cast<int64_t>(out.size());
}

MSPM_EXPORT int64_t mspm_decode(void* handle,
                                const int32_t* ids,
                                int64_t n,
                                char* out,
                                int64_t capacity,
                                char* error,
                                size_t error_len) {
    auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(handle);
    std::vector<int> in(ids, ids + n);
    std::string text;
    const auto status = sp->Decode(in, &text);
    if (!status.ok()) {
        set_error(error, error_len, status.ToString());
        return -1;
    }
    if (capacity > 0) {
        const int64_t k = std::min<int64_t>(capacity - 1, static_cast<int64_t>(text.size()));
        std::memcpy(out, text.data(), static_cast<size_t>(k));
        out[k] = '\0';
    }
    return static_cast<int64_t>(text.size());
}

MSPM_EXPORT int64_t mspm_vocab_size(void* handle) {
    return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->GetPieceSize();
}

MSPM_EXPORT int32_t mspm_piece_to_id(void* handle, const char* piece) {
    return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->PieceToId(piece);
}

MSPM_EXPORT void mspm_free(void* handle) {
    delete static_cast<sentencepiece::SentencePieceProcessor*>(handle);
}

MSPM_EXPORT int mspm_train(const char* args, char* error, size_t error_len) {
    const auto status = sentencepiece::SentencePieceTrainer::Train(args);
    if (!status.ok()) {
        set_error(error, error_len, status.ToString());
        return -1;
    }
    return 0;
}
