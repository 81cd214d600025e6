"""The README's set-up commands: CI runs exactly the test command a new user is given."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(marker):
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  found = re.search(rf'<!-- {marker} -->\s*```bash\n(.*?)\n```', text, re.S)
  assert found, f'no fenced bash block after <!-- {marker} --> in README.md'
  return found.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim():
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    commands = [line.strip() for line in f if line.strip() and not line.startswith('#')]
  assert commands[-1] == readme_block('test-command')


def test_the_main_command_installs_and_trains_on_the_default_dataset():
  command = readme_block('main-command')
  assert 'pip install -e .' in command and command.endswith('-m glow_tf.train')
