// GSM8K task definitions and prompt text; see gsm8k_prompts.h and the rules in gsm8k.h.
#include "eval/gsm8k_prompts.h"

#include "eval/py_random.h"

namespace llmq {

std::string_view gsm8k_style_name(Gsm8kStyle s) { return s == Gsm8kStyle::kGsm8k ? "gsm8k" : "cot-llama"; }

Expected<Gsm8kStyle> parse_gsm8k_style(std::string_view name) {
  if (name == "gsm8k") return Gsm8kStyle::kGsm8k;
  if (name == "cot-llama") return Gsm8kStyle::kCotLlama;
  return Status::error("--style must be gsm8k or cot-llama, not '" + std::string(name) + "'");
}

const Gsm8kTaskSpec& gsm8k_task_spec(Gsm8kStyle s) {
  // lm_eval/tasks/gsm8k/gsm8k.yaml, metadata.version 3.0. The regex strings are the yaml's
  // after YAML unescaping ("\\$" -> \$).
  static const Gsm8kTaskSpec kGsm8k = {
      "gsm8k",
      3.0,
      5,
      "default",
      {"Question:", "</s>", "<|im_end|>"},
      {{{"strict-match", "#### (\\-?[0-9\\.\\,]+)", 0}, {"flexible-extract", "(-?[$0-9.,]{2,})|(-?[0-9]+)", -1}},
       {",", "\\$", "(?s).*#### ", "\\.$"},
       true,
       "[invalid]"}};
  // lm_eval/tasks/gsm8k/gsm8k-cot-llama.yaml, metadata.version 4.0.
  static const Gsm8kTaskSpec kCotLlama = {
      "gsm8k_cot_llama",
      4.0,
      8,
      "first_n",
      {"<|eot_id|>", "<|start_header_id|>user<|end_header_id|>", "Q:", "</s>", "<|im_end|>"},
      {{{"strict-match", "The final answer is ((-?[$0-9.,]{2,})|(-?[0-9]+))", -1},
        {"flexible-extract", "(-?[$0-9.,]{2,})|(-?[0-9]+)", -1}},
       {",", "\\$", "(?s).*#### ", "\\.$"},
       true,
       "[invalid]"}};
  return s == Gsm8kStyle::kGsm8k ? kGsm8k : kCotLlama;
}

const std::vector<CotExemplar>& cot_llama_exemplars() {
  // The yaml's plain multi-line scalars, folded (line breaks -> one space) as YAML does.
  // scripts/gsm8k_reference.py reads this block; keep the markers.
  static const std::vector<CotExemplar> kExemplars = {
      // BEGIN COT EXEMPLARS
      {"There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
       "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The final answer is 6"},
      {"If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
       "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The final answer is 5"},
      {"Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
       "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The final answer is 39"},
      {"Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
       "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The final answer is 8"},
      {"Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
       "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The final answer is 9"},
      {"There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
       "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The final answer is 29"},
      {"Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
       "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The final answer is 33"},
      {"Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
       "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The final answer is 8"},
      // END COT EXEMPLARS
  };
  return kExemplars;
}

std::string gsm8k_doc_to_text(Gsm8kStyle s, std::string_view question) {
  std::string out;
  if (s == Gsm8kStyle::kGsm8k) {
    out = "Question: ";
    out += question;
    out += "\nAnswer:";
  } else {
    out = "Given the following problem, reason and give a final answer to the problem.\nProblem: ";
    out += question;
    out += "\nYour response should end with \"The final answer is [answer]\" where [answer] is the response to the "
           "problem.\n";
  }
  return out;
}

std::string gsm8k_doc_to_target(Gsm8kStyle s, const Gsm8kDoc& doc) {
  if (s == Gsm8kStyle::kGsm8k) return doc.answer;
  // answer.split('####')[-1].strip(): the text after the last "####".
  const size_t at = doc.answer.rfind("####");
  const std::string_view tail = at == std::string::npos ? std::string_view(doc.answer)
                                                        : std::string_view(doc.answer).substr(at + 4);
  return std::string(strip_ascii(tail));
}

Expected<std::vector<std::vector<int64_t>>> gsm8k_fewshot_indices(const std::vector<Gsm8kDoc>& test, int64_t n_docs,
                                                                  const std::vector<Gsm8kDoc>& train, int64_t k,
                                                                  int64_t seed) {
  const int64_t n_train = static_cast<int64_t>(train.size());
  if (k > n_train)
    return Status::error("--fewshot " + std::to_string(k) + " exceeds the " + std::to_string(n_train) +
                         " training documents");
  PyRandom rnd(seed);
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(n_docs));
  for (int64_t d = 0; d < n_docs; ++d) {
    if (k == 0) continue;  // num_fewshot 0: the sampler is never asked
    LLMQ_ASSIGN_OR_RETURN(std::vector<int64_t> picked, rnd.sample_indices(n_train, k));
    for (int64_t i : picked)
      if (!(train[i] == test[d])) out[d].push_back(i);  // [x for x in fewshotex if x != doc][:k]
  }
  return out;
}

std::string gsm8k_plain_prompt(const std::vector<const Gsm8kDoc*>& exemplars, std::string_view question) {
  std::string out;
  for (const Gsm8kDoc* ex : exemplars) {
    out += gsm8k_doc_to_text(Gsm8kStyle::kGsm8k, ex->question);
    out += ' ';  // target_delimiter
    out += ex->answer;
    out += "\n\n";  // fewshot_delimiter
  }
  out += gsm8k_doc_to_text(Gsm8kStyle::kGsm8k, question);
  return out;
}

Expected<std::vector<ChatMessage>> cot_llama_messages(int64_t k, std::string_view question) {
  const std::vector<CotExemplar>& shots = cot_llama_exemplars();
  if (k < 0 || k > static_cast<int64_t>(shots.size()))
    return Status::error("--fewshot " + std::to_string(k) + " outside [0, " + std::to_string(shots.size()) +
                         "] for the cot-llama style (first_n over its 8 exemplars)");
  std::vector<ChatMessage> msgs;
  for (int64_t i = 0; i < k; ++i) {
    msgs.push_back({"user", gsm8k_doc_to_text(Gsm8kStyle::kCotLlama, shots[i].question)});
    msgs.push_back({"assistant", shots[i].target});
  }
  msgs.push_back({"user", gsm8k_doc_to_text(Gsm8kStyle::kCotLlama, question)});
  return msgs;
}

std::string render_gsm8k_chat(const std::vector<ChatMessage>& messages, ChatTemplateKind kind) {
  std::string out = render_llama3_chat(messages, /*add_generation_prompt=*/true);
  if (kind == ChatTemplateKind::kLlama31) {
    const std::string bos = "<|begin_of_text|>";
    out.insert(bos.size(),
               "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
               "Today Date: 26 Jul 2024\n\n<|eot_id|>");
  }
  return out;
}

}  // namespace llmq
