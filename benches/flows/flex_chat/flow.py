from pathlib import Path

from promptflow.core import AzureOpenAIModelConfiguration, Prompty
from promptflow.tracing import trace

BASE_DIR = Path(__file__).absolute().parent


class ChatFlow:
    def __init__(self, model_config: AzureOpenAIModelConfiguration, max_total_token=4096):
        self.model_config = model_config
        self.max_total_token = max_total_token

    @trace
    def __call__(self, question: str = "What is promptflow?", chat_history: list = None) -> str:
        prompty = Prompty.load(source=BASE_DIR / "chat.prompty", model={"configuration": self.model_config})
        chat_history = chat_history or []
        # Drop the oldest turns while the prompt would use more tokens than allowed.
        while chat_history and prompty.estimate_token_count(question=question, chat_history=chat_history) > self.max_total_token:
            chat_history = chat_history[1:]
        return prompty(question=question, chat_history=chat_history)
