// Model::Load: the bundle's manifest, ONNX Runtime sessions for its graphs, the thread cap.
#include <algorithm>
#include <limits>
#include <thread>

#include "model_impl.hpp"
#include "ort_env.hpp"
#include "tandem/tandem.hpp"

namespace tandem {

using detail::Graph;

namespace {

[[noreturn]] void Invalid(const std::string& what) { throw Error(ErrorCode::kInvalidArgument, what); }

// The thread cap (MaxThreads). ONNX Runtime starts every worker of a session's pool while it
// creates the session, and the workers spin, so load time grows with the count: the default
// int4 bundle, on a busy 2-core machine, loaded with 8 threads in 0.2 s, 64 in 1.4 s, 256 in
// 5 s, 1024 in 27 s (1024 + 1024 drafter threads: over 60 s); 10**6 hangs. The cap scales
// with the machine so that it accepts every real one (the largest single-image servers have
// ~2000 hardware threads: a 32-socket HPE Superdome Flex has 1792): one thread per hardware
// thread is the most that helps, and 4x leaves room for deliberate oversubscription. The
// floor keeps a count tuned for an ordinary server loadable on a small VM or container (and
// covers hardware_concurrency() reporting 0). It stops typos and unit mix-ups; it is not a
// tuning limit.
constexpr unsigned kThreadsPerHardwareThread = 4;
constexpr int kMinThreadCap = 64;

}  // namespace

void CheckThreads(const std::string& name, int64_t value, const std::string& zero_means) {
  const int cap = MaxThreads();
  if (value < 0) Invalid(name + " must be >= 0 (0: " + zero_means + ")");
  if (value > cap)
    Invalid(name + "=" + std::to_string(value) + " is above the cap of " + std::to_string(cap) +
            " threads on this machine (" + std::to_string(kThreadsPerHardwareThread) + " per hardware thread, at least " +
            std::to_string(kMinThreadCap) + "): pass a count from 1 to " + std::to_string(cap) + ", or 0 for " +
            zero_means);
}

int MaxThreads() noexcept {
  static const int cap = [] {
    const unsigned hw = std::thread::hardware_concurrency();  // 0 when unknown
    const long long scaled = static_cast<long long>(hw) * kThreadsPerHardwareThread;
    return static_cast<int>(std::min<long long>(std::max<long long>(kMinThreadCap, scaled),
                                                std::numeric_limits<int>::max()));
  }();
  return cap;
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

std::shared_ptr<const Model> Model::Load(const ModelOptions& options) {
  // before anything else: a session created with a huge count would hang starting its threads
  CheckThreads("intra_op_threads", options.intra_op_threads, "one per core");
  CheckThreads("drafter_threads", options.drafter_threads, "as intra_op_threads");
  auto impl = std::make_unique<Impl>();
  impl->manifest = ReadManifest(options.bundle_path);
  Ort::Env& env = detail::OrtEnvironment(options.ort_library);
  Ort::SessionOptions so;
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  if (options.intra_op_threads > 0) so.SetIntraOpNumThreads(options.intra_op_threads);
  so.SetInterOpNumThreads(1);
  so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
  if (options.device == Device::kCuda) {
    if (!detail::HasExecutionProvider("CUDAExecutionProvider"))
      throw Error(ErrorCode::kDeviceUnavailable,
                  "device=cuda asked for, but the ONNX Runtime in use (" + detail::LoadedOrtLibrary() +
                      ") has no CUDAExecutionProvider; install onnxruntime-gpu or use device=cpu");
    OrtCUDAProviderOptions cuda{};
    so.AppendExecutionProvider_CUDA(cuda);
  }
  const auto& m = impl->manifest;
  // Tensors the graphs read from the same bytes (a drafter with M_L's embedding and head) are
  // mapped once, and their prepacked forms shared by the sessions. CPU only: ONNX Runtime
  // shares prepacked weights of the CPU provider (on CUDA each session copies its weights to
  // the device anyway, and that path has not been run here).
  std::vector<std::string> files{m.large.file};
  if (m.tandem_drafter) files.push_back(m.tandem_drafter->file);
  if (m.plain_drafter) files.push_back(m.plain_drafter->file);
  if (options.share_weights && options.device == Device::kCpu && files.size() > 1) impl->shared = std::make_unique<detail::SharedWeights>(files);
  detail::SharedWeights* shared = impl->shared.get();
  impl->large = std::make_unique<Graph>(m.large, env, so, shared);
  // The drafters get their own, smaller thread pool. M_L's and M_S's sessions alternate
  // within a round, and each pool's workers spin for a while after their Run: with as many
  // workers as cores, the two pools fight over the cores (measured: M_L's 2-token verify
  // took 2x its isolated time). A one-thread drafter runs on the calling thread and leaves
  // M_L's spinning workers a core of their own.
  const int drafter_threads = options.drafter_threads > 0 ? options.drafter_threads : options.intra_op_threads;
  if (drafter_threads > 0) so.SetIntraOpNumThreads(drafter_threads);
  if (m.tandem_drafter) {
    impl->tandem_drafter = std::make_unique<Graph>(*m.tandem_drafter, env, so, shared);
    for (int layer : m.tandem_drafter->memory_layers) {
      auto it = std::find(m.large.rep_layers.begin(), m.large.rep_layers.end(), layer);
      impl->memory_source.push_back(static_cast<int>(it - m.large.rep_layers.begin()));
    }
  }
  if (m.plain_drafter) impl->plain_drafter = std::make_unique<Graph>(*m.plain_drafter, env, so, shared);
  if (shared) shared->ReleasePages();  // the sessions hold what they prepacked
  return std::shared_ptr<const Model>(new Model(std::move(impl)));
}

const Manifest& Model::manifest() const { return impl_->manifest; }
const std::string& Model::bundle_path() const { return impl_->manifest.folder; }
int64_t Model::vocab_size() const { return impl_->manifest.vocab_size; }
int64_t Model::context_length() const { return impl_->manifest.context_length; }
BundleDefaults Model::defaults() const {
  const auto& m = impl_->manifest;
  return {m.default_block_length, m.max_block_length, m.router_threshold,
          m.tandem_drafter ? m.tandem_drafter->trained_block_length : 0};
}
bool Model::has_tandem_drafter() const { return impl_->tandem_drafter != nullptr; }
uint64_t Model::shared_weight_bytes() const { return impl_->shared ? impl_->shared->bytes() : 0; }
bool Model::has_plain_drafter() const { return impl_->plain_drafter != nullptr; }
bool Model::has_router(Mode mode) const {
  const Graph* g = mode == Mode::kVanilla ? impl_->plain_drafter.get() : impl_->tandem_drafter.get();
  return g && g->spec().has_router();
}
const std::vector<int64_t>& Model::eos_token_ids() const { return impl_->manifest.eos_token_ids; }
const std::string& Model::tokenizer_path() const { return impl_->manifest.tokenizer; }

DecodeCosts Model::decode_costs(Mode mode) const {
  if (mode == Mode::kLarge) throw Error(ErrorCode::kInvalidArgument, "mode large has no drafter: its costs are M_L's alone");
  if (mode == Mode::kVanilla ? !has_plain_drafter() : !has_tandem_drafter())
    throw Error(ErrorCode::kInvalidArgument, std::string("mode ") + ToString(mode) + " needs a " +
                (mode == Mode::kVanilla ? "plain" : "tandem") + " drafter, and the bundle has none");
  const int slot = mode == Mode::kVanilla ? 1 : 0;
  std::call_once(impl_->costs_once[slot], [&] {
    impl_->costs[slot] = Generator::MeasureCosts(shared_from_this(), mode == Mode::kVanilla ? Mode::kVanilla : Mode::kSpeed);
  });
  return impl_->costs[slot];
}

}  // namespace tandem
