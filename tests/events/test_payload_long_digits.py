"""PayloadField's choice of JSON reader: a run of 19 ASCII digits sends the text to json.loads."""

import re

from hypothesis import given
from hypothesis import strategies as st

from events.models import Event, PayloadField, long_digits

ASCII_RUN = re.compile(r"[0-9]{19}")


@given(st.text(alphabet=st.sampled_from('0123456789 ,.-e"é٣０'), max_size=80))
def test_long_digits_is_a_run_of_19_ascii_digits(text):
    assert long_digits(text) == (ASCII_RUN.search(text) is not None)


def test_each_reader_gives_the_value_written():
    field = Event._meta.get_field("payload")
    assert isinstance(field, PayloadField)
    for text, value in [
        ('{"id":18446744073709551617}', {"id": 18446744073709551617}),
        ('{"id":1844674407370955161}', {"id": 1844674407370955161}),
        ('{"ref":"1234567890123456789","n":1.5}', {"ref": "1234567890123456789", "n": 1.5}),
        ('{"ref":"١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠"}', {"ref": "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠"}),
    ]:
        read = field.from_db_value(text, None, None)
        assert read == value and [type(v) for v in read.values()] == [type(v) for v in value.values()]
