"""A faithful mini-ggml: llama.cpp's reserve graph, rebuilt, to plan its memory to the byte.

llama.cpp's compute buffer is what ggml-alloc places for one worst-case ubatch graph (the
scheduler splits it per backend first). kvgui rebuilds that graph tensor by tensor, as
llama.cpp's own code builds it, and replays ggml-alloc over it.

Architecture
============

``sym``     Dimensions are ints or ``Sym``: integer polynomials over the shape variables U
            (tokens per sequence), O (outputs), K (KV cells per stream), W (sliding-window
            cells per stream); n_seqs and n_stream are build-time integers (n_tokens is
            ``n_seqs * U``). Strides and byte sizes are polynomials too, so layouts compare
            exactly (ggml_are_same_layout) without numbers. A variable that is 1 for some
            settings is built as the constant (ggml special-cases dimensions of 1).
``ir``      ``Tensor``: type, ne, nb, src (ggml's order), view_src (the storage owner, as
            ggml_new_tensor_impl resolves it), flags (INPUT/OUTPUT), name, ``il`` (the layer
            being built) and ``loc`` for tensors in their own buffers: weights
            (input / layer il / output), KV cache and recurrent states (of layer il).
            ``Graph.expand`` is ggml_build_forward_expand (depth first, sources left to right).
``ops``     ggml.c's constructors with its shape and type rules (``ggml.mul_mat(ctx0, a, b)``
            for ``ggml_mul_mat(ctx0, a, b)``): which op makes a new tensor and which a view,
            sources in src[] order, ``CAN_INPLACE`` (ggml_op_can_inplace).
``alloc``   ggml_gallocr_alloc_graph_impl recorded once (leafs, inputs, nodes with their
            parents; in-place reuse of a parent with one child, no views and the same layout;
            parents freed after their last child; outputs never freed; ggml_cast's
            self-reference) into a ``Program`` of allocations and frees over distinct sizes,
            each size a linear form over the program's monomials. ``replay`` runs
            ggml_dyn_tallocr (best fit, else grow the last block) for one shape's values;
            layers whose operations and starting state were seen before are skipped, so a
            replay costs a few layers' work at any depth (tests hold it equal to the full
            walk).

``sched``   ggml_backend_sched_split_graph: a backend for each node from where its data and
            weights live (``Buft``: each weight / cache tensor's buffer type by its ``loc``),
            the CPU for inputs, CUDA's offload_op (batch >= 32) for host-weight ops, the
            expansion passes, splits where the backend changes, one copy per (source,
            backend) and the dependency that keeps its source alive, ``n_copies`` (pipeline
            parallelism: 4, never freed), llama.cpp's backend hints; then the graph copy that
            ``alloc.record_buffers`` walks with each node in its backend's buffer (one
            Program per buffer: each allocator sees only its own operations). Shape-dependent
            choices (offload_op's batch, n_tokens < 32) are recorded in ``Decisions`` and a
            recording is reused only for shapes that decide alike.

``builders/`` (kvgui/core/memory/builders) mirror llama.cpp on top of this:
``common.GraphContext`` is llm_graph_context (build_inp_embd, build_norm, build_ffn,
build_moe_ffn, build_qkv, build_attn / build_attn_mha with the KV cache stores, flash
attention or not, the Hadamard rotations of quantized caches, the two caches of iswa,
build_inp_out_ids, build_rs / the recurrent inputs), with the caches of
llama-kv-cache.cpp (``KVCache``: get_k / get_v / cpy_k / cpy_v / the input builders) and
llama-memory-recurrent.cpp; one module per architecture mirrors src/models/<arch>.cpp.
``kvgui/core/memory/reserve.py`` keys, builds, records and replays (``peak``: one backend;
``peaks``: a ``Layout`` of several, the CPU last); ``compute.py`` gives the figure per device
(``Offload``: where the estimate put the layers, as CUDA devices).

Record once, replay per shape: a graph is built per (model, flash attention, cache kinds,
n_seqs, unified cache, variables equal to 1); the slider only changes K, W (and U, O when the
context is shorter than a ubatch), i.e. the sizes, never the program.

HOWTO: add an architecture
==========================

1. Read src/models/<arch>.cpp in the bundled llama.cpp
   (llama-cpp-python's vendor/llama.cpp): the graph constructor, ``load_arch_hparams`` and
   ``load_arch_tensors``. Note which helpers of src/llama-graph.cpp it calls.
2. Write ``builders/<arch>.py``: a ``GraphContext`` subclass whose ``build`` is the C++
   constructor line for line, same variable names, same order, same ``cb`` names::

       for il in self.layers():                 # for (int il = 0; il < n_layer; ++il)
           layer = model.layers[il]             # model.layers[il]
           cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
           cb(cur, "attn_norm", il)
           Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)   # rope params do not matter

   ``self.layers()`` tags what the loop builds with ``il`` (the replay's unit). Every
   ``ggml_build_forward_expand`` of the C++ is a ``self.gf.expand``: the order of the graph
   decides the allocation, so keep each one. End with ``return self.finish(cur)`` after
   setting ``self.res.t_logits`` / ``t_embd`` (/ ``t_h_nextn``) as the C++ does.
   Weights come from the file's tensor table: ``layer.wq`` is ``blk.il.attn_q.weight`` by
   ``common.LAYER_TENSORS``; a field named otherwise in this architecture's
   load_arch_tensors goes in the class's ``layer_names``. A tensor the file lacks is None,
   as TENSOR_NOT_REQUIRED gives.
3. Hparams set in code rather than read from a key (load_arch_hparams) go in a function
   registered in ``builders.HPARAMS``; generic keys are in ``builders/hparams.py``.
4. An op ggml has and ``ops`` lacks: add it from ggml/src/ggml.c (result type and ne, new
   tensor or view of which source, src order; if it is in ggml_op_can_inplace, add it to
   ``CAN_INPLACE``). A missing llama-graph.cpp helper goes in ``common.py`` under its name.
5. Register the class in ``builders.BUILDERS``. ``reserve.supports(model)`` is then true when
   the graph reads every tensor of the file (a tensor it never reads is a variant you have
   not followed: the estimate falls back to the stage model for it).
6. Check against llama.cpp (a sparse, header-faithful file; no weights are read)::

       python -m kvgui.testing.reserve_check "Label Q4_K_M"       # the default matrix
       python -m kvgui.testing.reserve_check path/to/model.gguf

   It runs the bundled llama.cpp's no_alloc dry run for f16/q8_0/q4_0 caches, flash
   attention on and off, -np 4, -kvu, --swa-full, -ub 1 / 7 / 1024 and a context shorter
   than a ubatch, and prints, per setting, llama.cpp's CPU compute buffer and graph node
   count next to kvgui's. Both must be equal: the node count first (the structure), then the
   bytes. A node-count difference is a missing or extra op (compare with the C++); equal
   counts and different bytes are usually an op's result shape or a view vs. a copy, or a
   ``gf.expand`` missing or misplaced. Then add the model to the catalog and a row to
   tests/core/test_against_llama_cpp.py.
7. Several devices come for free (the scheduler reads ``loc`` and the ops); check them with
   ggml-rpc-server devices and llama-fit-params (kvgui.testing.rpc; tests/core/
   test_multi_device_rpc.py shows how, ``kvgui.testing.reserve_check.rpc_layout`` builds the
   matching Layout). An architecture that calls ggml_backend_sched_set_tensor_backend or
   llama.cpp's callback on a tensor adds it to ``self.pins`` (see GraphContext.cb).
"""
