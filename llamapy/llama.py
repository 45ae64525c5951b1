"""High-level model object: the Python API that `run`, `chat`, `perplexity`, `bench` and `serve` share.

CONTRACT (implemented by the engine; chat and server code against exactly this):

    llm = Llama(model_path=None, n_ctx=0, n_threads=None, n_batch=512, n_seq_max=1, embeddings=False)
        model_path None -> the default model; n_ctx 0 -> the model's training context;
        n_threads None -> physical cores; n_seq_max: how many independent sequences (server slots)
        share the KV cache (each sequence gets its own n_ctx positions).
    llm.tokenizer          llamapy.tokenizer.Tokenizer (encode/decode/token_to_piece/bos_id/eos_id/is_eog/...)
    llm.metadata           dict of GGUF metadata as plain Python values
    llm.chat_template      str | None   (tokenizer.chat_template)
    llm.n_ctx, llm.n_vocab, llm.n_embd, llm.n_seq_max, llm.n_threads, llm.model_path, llm.desc (str)

    llm.eval(tokens, seq_id=0) -> np.ndarray[float32] (n_vocab,)
        append `tokens` to sequence seq_id (positions continue from llm.n_past(seq_id)) in one or more
        C calls of up to n_batch tokens; returns the logits of the last token.
        Raises LlamapyError when the sequence would pass n_ctx.
    llm.eval_batch(items: list[tuple[int, list[int]]]) -> list[np.ndarray]
        several sequences advanced in ONE C call per n_batch tokens (continuous batching):
        items = [(seq_id, tokens), ...]; returns the last-token logits of each item, in order.
    llm.eval_all_logits(tokens, seq_id=0) -> np.ndarray (len(tokens), n_vocab)   (perplexity)
    llm.n_past(seq_id=0) -> int
    llm.tokens(seq_id=0) -> list[int]          token ids currently in the KV cache of that sequence
    llm.kv_truncate(seq_id, n)                 keep the first n positions of a sequence (prefix reuse)
    llm.kv_clear(seq_id=None)                  clear one sequence, or all
    llm.context_shift(seq_id, n_keep, n_discard)
        drop positions [n_keep, n_keep+n_discard) and shift the rest down (RoPE re-rotated), as llama.cpp
    llm.embed(tokens) -> np.ndarray[float32] (n_embd,)   pooled (mean unless the GGUF says otherwise),
        L2-normalised final hidden states; uses a scratch sequence, leaves others untouched.
    llm.close() / context manager

Sampling lives in llamapy.sampling:
    SamplerParams(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, typical_p=1.0, repeat_penalty=1.0,
                  repeat_last_n=64, presence_penalty=0.0, frequency_penalty=0.0, mirostat=0,
                  mirostat_tau=5.0, mirostat_eta=0.1, seed=-1, logit_bias={}, ignore_eos=False, n_probs=0)
    sampler = Sampler(params, llm.n_vocab, eog_ids=...)
    tok = sampler.sample(logits, history)      history: recent token ids (for penalties)
    sampler.last_probs -> list[(token_id, prob)] of the top n_probs candidates of the last sample (logprobs)

Generation helper in llamapy.generate:
    generate(llm, prompt_tokens, params, n_predict=-1, seq_id=0, reuse_prefix=True) -> Iterator[int]
        evaluates the prompt (reusing a matching prefix already in that sequence's cache), then samples
        and yields token ids until an end-of-generation token (not yielded) or n_predict tokens;
        context shift when the context fills and n_predict allows it. Timings in generate.Timings.
"""
